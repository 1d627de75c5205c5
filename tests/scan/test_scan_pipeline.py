"""End to end on a tiny profile: prepare -> pretrain -> tune (two groups) -> report, twice, in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from equitune.pipeline.stage import run_stage
from helpers.paths import ROOT, stage_argv, stage_main

STAGES = ("scan_prepare", "scan_pretrain@add_jump-lstm-0", "scan_tune_add_jump@jump_run-lstm-0",
          "scan_tune_add_jump@verbs-lstm-0")


def _without_costs(metrics: dict) -> dict:
    """Wall and CPU seconds differ from run to run; everything else must not."""
    return {k: _without_costs(v) if isinstance(v, dict) else v for k, v in metrics.items()
            if "seconds" not in k and not k.endswith("_cost")}


def _shorten_evaluation_files(folder: Path, lines: int = 300) -> None:
    """Evaluation decodes every command |G| times for up to 49 steps (a barely trained model rarely stops):
    a few hundred commands exercise the same code as the whole split."""
    for part in ("validation", "test"):
        path = folder / f"{part}.txt"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:: 20][:lines]))


@pytest.mark.slow
def test_tiny_pipeline_runs_and_is_deterministic(tmp_path, monkeypatch):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    scan = data["scan"]
    scan["grid"] = {"splits": ["add_jump"], "rnns": ["lstm"], "seeds": [0],
                    "groups": {"add_jump": ["jump_run", "verbs"], "around_right": []}}
    scan["model"]["hidden_size"] = 16
    scan["pretrain"].update(examples=256, batch_size=64, validate_every_examples=128)
    scan["tune"].update(steps={"add_jump": 2, "around_right": 2}, batch_size=16, curve_steps=[0, 1, 2],
                        equizero_proxy="entropy")
    scan["evaluation"]["max_output_length"] = 49
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    results = []
    for _ in range(2):
        for stage in STAGES:
            script = stage.split("@")[0].removeprefix("scan_").split("_")[0]
            run_stage(stage_main(f"scan/{script}"), [*stage_argv(stage), "--params", str(params)])
            if stage == "scan_prepare":
                _shorten_evaluation_files(Path("data/scan/add_jump"))
        results.append({name: json.loads(Path(f"metrics/scan/{name}.json").read_text()) for name in
                        ("pretrain/add_jump-lstm-0", "tune/add_jump-jump_run-lstm-0", "tune/add_jump-verbs-lstm-0")})
    assert _without_costs(results[0]) == _without_costs(results[1])
    pretrain = results[0]["pretrain/add_jump-lstm-0"]
    assert {"validation_accuracy", "test_accuracy", "history", "pretrain_seconds", "pretrain_cpu_seconds"} <= set(pretrain)
    for group, order in (("jump_run", 2), ("verbs", 4)):
        metrics = results[0][f"tune/add_jump-{group}-lstm-0"]
        assert metrics["group_order"] == order
        assert set(metrics) >= {"equitune_0_steps", "equitune", "equizero_0_steps", "equizero", "curve",
                                "equitune_cost", "equizero_cost"}
        assert metrics["equitune_equivariance_error"] < 1e-10 < metrics["pretrained_equivariance_error"]
        assert metrics["equitune_decoding_equivariance_fraction"] == 1.0
        assert set(metrics["curve"]["equitune"]) == {f"step_{s}_test_accuracy" for s in (0, 1, 2)}
        assert metrics["equitune"]["test_accuracy"] == metrics["curve"]["equitune"]["step_2_test_accuracy"]
        # Evaluation-only additions: the other combination rule, frame decoding, speed, validation curves.
        rules = metrics["equitune_combinations"]
        assert rules["configured"] == "log_prob_mean" and rules["log_prob_mean"]["tuned"] == metrics["equitune"]
        assert set(rules["prob_mean"]) == {"0_steps", "tuned"}
        assert set(metrics["frame_decoding_of_equitune"]) == set(metrics["equitune"])
        assert 1 <= metrics["frame_mean_size"] < order  # most Add-Jump test commands: one copy
        assert set(metrics["decoding_speed"]) == {"equitune", "equizero", "frame"}
        # The frame method tuned through its own frame: its results, cost and validation curve.
        assert set(metrics["frame"]) == set(metrics["equitune"]) and metrics["frame_cost"]["cpu_seconds"] > 0
        assert metrics["frame_equivariance_error"] < 1e-10
        for method in ("equitune", "equizero", "frame"):
            validation = metrics["validation_curve"][method]
            assert set(validation) == {f"step_{s}_validation_accuracy" for s in (0, 1, 2)}
            assert validation["step_2_validation_accuracy"] == metrics[method]["validation_accuracy"]
    overlap = pretrain["validation_overlap"]
    assert overlap["lines"] == 147 and 0 < overlap["lines_in_training"] < overlap["lines"]  # the bare "jump" copies
    run_stage(stage_main("scan/report"), [*stage_argv("scan_report"), "--params", str(params)])
    section = Path("reports/scan.md").read_text()
    assert section.startswith("## ") and "| add_jump | lstm | jump_run (2) |" in section
    assert "| add_jump | lstm | verbs (4) |" in section and "entropy proxy" in section
    assert "product of experts" in section and "of which in training" in section
    assert "tuned through its own frame" in section and "frame decoding of equitune's tuned checkpoint" in section
    assert "| pretraining | equitune | equizero | frame |" in section  # the cost table
    assert Path("reports/figures/scan/curves_add_jump.png").stat().st_size > 1000
