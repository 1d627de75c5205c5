"""The SCAN report's tables for the combination rules, frame decoding and the validation overlap, on tiny metrics
written by hand: the numbers land in the right cells, and metrics written before these keys leave the tables out."""

from __future__ import annotations

import pytest
import yaml

from equitune.core.errors import DataError
from equitune.pipeline.curves import Curve
from equitune.pipeline.io import write_json
from equitune.scan.config import ScanParams
from equitune.scan.report import (
    Results,
    _combination_table,
    _cost_table,
    _findings,
    _frame_table,
    _overlap_table,
    _recipes_sentence,
    collect,
    plot_curves,
)
from helpers.paths import ROOT


def _params() -> ScanParams:
    scan = yaml.safe_load((ROOT / "params.yaml").read_text())["scan"]
    scan["grid"] = {"splits": ["add_jump"], "rnns": ["lstm"], "seeds": [0, 1],
                    "groups": {"add_jump": ["jump_run"], "around_right": []}}
    return ScanParams.model_validate(scan)


def _part(test: float, validation: float) -> dict:
    return {"test_accuracy": test, "validation_accuracy": validation}


def _tune(seed: int) -> dict:
    shift = 0.1 * seed  # seed 0 and seed 1: means are the midpoints, std the spread
    return {
        "group_order": 2, "frame_mean_size": 1.2 + shift,
        "equitune_combinations": {"configured": "log_prob_mean",
                                  "log_prob_mean": {"0_steps": _part(0.10 + shift, 0.5), "tuned": _part(0.90, 0.95)},
                                  "prob_mean": {"0_steps": _part(0.20, 0.6), "tuned": _part(0.80 + shift, 0.9)}},
        "frame_0_steps": _part(0.30, 0.7), "frame": _part(0.93 + 0.02 * seed, 0.96),
        "frame_decoding_of_equitune": _part(0.95 + 0.02 * seed, 0.97),
        "decoding_speed": {method: {"commands": 1000, "cpu_seconds": seconds, "seconds": seconds}
                           for method, seconds in (("frame", 1.0), ("equitune", 2.0), ("equizero", 4.0))},
    }


def _pretrain() -> dict:
    return {"validation_overlap": {"lines": 2934, "lines_in_training": 301, "accuracy": 0.99,
                                   "deduplicated_accuracy": 0.98}}


def test_the_new_tables_show_the_metrics():
    params = _params()
    results = Results({("add_jump", "lstm"): [_pretrain(), _pretrain()]},
                      {("add_jump", "lstm", "jump_run"): [_tune(0), _tune(1)]})
    combination = "\n".join(_combination_table(params, results))
    assert "log_prob_mean, is the paper's choice" in combination and "product of experts" in combination
    assert ("| add_jump | lstm | jump_run | 15.0 ± 7.1 (50.0 ± 0.0) | 90.0 ± 0.0 (95.0 ± 0.0) | "
            "20.0 ± 0.0 (60.0 ± 0.0) | 85.0 ± 7.1 (90.0 ± 0.0) |") in combination
    frame = "\n".join(_frame_table(params, results))
    assert "tuned through its own frame" in frame and "add_jump: ['jump']" in frame
    assert ("| add_jump | lstm | jump_run (2) | 30.0 ± 0.0 | 94.0 ± 1.4 | 96.0 ± 1.4 | 1.25 | 1000 ± 0 | 500 ± 0 | "
            "250 ± 0 |") in frame
    overlap = "\n".join(_overlap_table(params, results))
    assert "| add_jump | lstm | 2934 | 301 | 99.0 ± 0.0 | 98.0 ± 0.0 |" in overlap


def test_metrics_without_the_new_keys_leave_the_tables_out():
    params = _params()
    old = Results({("add_jump", "lstm"): [{}, {}]}, {("add_jump", "lstm", "jump_run"): [{"group_order": 2}] * 2})
    assert _combination_table(params, old) == [] and _frame_table(params, old) == []
    assert _overlap_table(params, old) == []
    # Written before frame tuning: "frame" was equitune's checkpoint decoded through the frame; no frame table.
    before_frame_tuning = {**_tune(0)}
    del before_frame_tuning["frame_decoding_of_equitune"]
    assert _frame_table(params, Results({}, {("add_jump", "lstm", "jump_run"): [before_frame_tuning] * 2})) == []


def test_the_cost_table_has_a_frame_column_when_the_cells_tuned_through_the_frame():
    params = _params()
    pretrain = {"pretrain_seconds": 100.0, "pretrain_cpu_seconds": 90.0}
    tune = {f"{method}_cost": {"seconds": seconds, "cpu_seconds": seconds / 2}
            for method, seconds in (("equitune", 40.0), ("equizero", 60.0), ("frame", 10.0))}
    results = Results({("add_jump", "lstm"): [pretrain] * 2}, {("add_jump", "lstm", "jump_run"): [tune] * 2})
    table = "\n".join(_cost_table(params, results))
    assert "| split | cell | group | pretraining | equitune | equizero | frame |" in table
    assert "| add_jump | lstm | jump_run | 100 ± 0 / 90 ± 0 | 40 ± 0 / 20 ± 0 | 60 ± 0 / 30 ± 0 | 10 ± 0 / 5 ± 0 |" in table
    del tune["frame_cost"]
    table = "\n".join(_cost_table(params, results))
    assert "| pretraining | equitune | equizero |" in table and "frame" not in table


def test_the_findings_name_the_frame_tuned_model_beside_equitunes_checkpoint_decoded_through_the_frame():
    params = _params()
    pretrain = {"test_accuracy": 0.002, "validation_accuracy": 0.99}
    tune = [{**_tune(seed), **{key: _part(0.5, 0.9) for key in
                               ("equitune", "equitune_0_steps", "equizero", "equizero_0_steps")}} for seed in (0, 1)]
    results = Results({("add_jump", "lstm"): [pretrain] * 2}, {("add_jump", "lstm", "jump_run"): tune})
    text = _findings(params, results)[0]
    assert ("With jump_run, frame: best cell lstm 94.0% (0 steps: 30.0%), lowest single run 93.0%. Equitune's tuned "
            "checkpoints decoded through the frame: 96.0%.") in text
    for row in tune:
        del row["frame_decoding_of_equitune"]  # metrics from before frame tuning: "frame" was equitune's checkpoint
    assert "frame" not in _findings(params, results)[0]


def _write_cell_files(root, params: ScanParams) -> None:
    """Each cell's metrics file and curve file (DVC plots), as the pretraining and tuning stages write them."""
    steps = params.tune.curve_for("add_jump")
    for seed in params.grid.seeds:
        write_json(root / "metrics/pretrain" / f"add_jump-lstm-{seed}.json", _pretrain())
        write_json(root / "metrics/tune" / f"add_jump-jump_run-lstm-{seed}.json", _tune(seed))
        pretrain = Curve(root / "plots/pretrain" / f"add_jump-lstm-{seed}.csv", "examples",
                         ("train_loss", "validation_accuracy"))
        for examples in (1000, 2000):
            pretrain.add(examples, {"train_loss": 1 / examples, "validation_accuracy": examples / 2000})
        pretrain.write()
        tune = Curve(root / "plots/tune" / f"add_jump-jump_run-lstm-{seed}.csv", "step",
                     ("equitune_test_accuracy", "equizero_test_accuracy", "equitune_validation_accuracy"))
        for step in steps:
            tune.add(step, {"equitune_test_accuracy": 0.5, "equizero_test_accuracy": 0.25,
                            "equitune_validation_accuracy": 0.75})
        tune.write()


def test_the_curves_come_from_the_dvc_plots_files(tmp_path):
    params = _params()
    _write_cell_files(tmp_path, params)
    results = collect(params, tmp_path / "metrics", tmp_path / "plots")
    assert results.pretrain_curves[("add_jump", "lstm")][1] == {1000: {"train_loss": 1e-3, "validation_accuracy": 0.5},
                                                               2000: {"train_loss": 5e-4, "validation_accuracy": 1.0}}
    assert [path.name for path in plot_curves(params, results, tmp_path / "figures")] == ["curves_add_jump.png"]
    metrics_only = collect(params, tmp_path / "metrics")  # the report's headline: no curves read
    assert metrics_only.tune == results.tune and not metrics_only.tune_curves
    with pytest.raises(ValueError, match="collect.*plots_dir"):
        plot_curves(params, metrics_only, tmp_path / "figures")
    (tmp_path / "plots/tune/add_jump-jump_run-lstm-1.csv").unlink()
    with pytest.raises(DataError, match=r"add_jump-jump_run-lstm-1.csv is missing: run dvc repro "
                                        r"scan_tune_add_jump@jump_run-lstm-1$"):
        collect(params, tmp_path / "metrics", tmp_path / "plots")


def test_a_curve_without_a_test_column_at_every_step_is_an_error_naming_the_setting(tmp_path):
    params = _params()
    _write_cell_files(tmp_path, params)
    results = collect(params, tmp_path / "metrics", tmp_path / "plots")
    del results.tune_curves[("add_jump", "lstm", "jump_run")][0][100]["equizero_test_accuracy"]
    with pytest.raises(DataError, match=r"lack equizero_test_accuracy at steps \[100\] \(scan.tune.curve_steps\)"):
        plot_curves(params, results, tmp_path / "figures")


def test_the_report_names_the_recipe_of_each_kind_in_the_grid_that_has_one():
    params = _params()  # the committed recipes (an RNN one) and an LSTM-only grid: nothing to say
    assert params.recipes and _recipes_sentence(params) == ""
    params = params.model_copy(update={"grid": params.grid.model_copy(update={"rnns": ["lstm", "rnn"]})})
    rnn = params.recipes["rnn"]
    sentence = _recipes_sentence(params)
    assert sentence.startswith(" Recipes of their own (scan.recipes): rnn: ")
    assert f"pretrain.examples {rnn.pretrain['examples']:,}" in sentence and "model.dropout 0.0" in sentence
    assert "lstm" not in sentence
