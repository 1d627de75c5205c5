"""Headline metrics: the README's numbers, one small file each, the only metrics `dvc metrics show` prints.

Right answers on hand-made metrics (mean and sample standard deviation over seeds, the rotated accuracy as the mean
over the four quarter turns, the NLG gap with its interval), the writer's checks and stale-file removal, and the
table DVC prints from them: narrow, one row per number.
"""

from __future__ import annotations

import json
import math

import pytest

from equitune.core.errors import DataError
from equitune.pipeline.headline import COLUMNS, over_seeds, statistic, write_headline
from equitune.pipeline.schema import load_section
from helpers.paths import ROOT, load_script
from helpers.toy_project import run


def _report_module():
    return load_script(ROOT / "pipelines" / "report.py", "stage_report_headline")


REPORT = _report_module()


def test_over_seeds_is_the_mean_and_sample_standard_deviation():
    entry = over_seeds([0.5, 0.7, 0.9])
    assert entry["value"] == pytest.approx(0.7) and entry["std"] == pytest.approx(0.2) and entry["seeds"] == 3
    assert over_seeds([0.25]) == {"value": 0.25, "std": 0.0, "seeds": 1}
    with pytest.raises(DataError, match="at least one seed"):
        over_seeds([])


def test_statistic_keeps_its_interval_and_p_value():
    assert statistic(-0.5, [-0.75, -0.25], 0.01) == {"value": -0.5, "ci_low": -0.75, "ci_high": -0.25, "p_value": 0.01}
    assert statistic(44.5) == {"value": 44.5}


def test_write_headline_writes_each_number_and_removes_stale_ones(tmp_path):
    folder = tmp_path / "headline"
    (folder / "scan").mkdir(parents=True)
    (folder / "scan" / "gone-cell-equitune.json").write_text("{}")
    (folder / "old").mkdir()
    (folder / "old" / "x.json").write_text("{}")
    written = write_headline(folder, {"scan/a-b-equitune": over_seeds([1.0, 0.5]), "nlg/lm-x-base": statistic(0.1)})
    assert sorted(p.relative_to(folder).as_posix() for p in written) == ["nlg/lm-x-base.json", "scan/a-b-equitune.json"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "nlg", "nlg/lm-x-base.json", "scan", "scan/a-b-equitune.json"]
    assert json.loads((folder / "scan" / "a-b-equitune.json").read_text()) == {
        "value": 0.75, "std": pytest.approx(math.sqrt(0.125)), "seeds": 2}


@pytest.mark.parametrize(("entries", "message"), [
    ({"scan/a b": {"value": 1.0}}, "headline name"),
    ({"../escape": {"value": 1.0}}, "headline name"),
    ({"scan/a": {"std": 1.0}}, "needs 'value'"),
    ({"scan/a": {"value": 1.0, "mean": 2.0}}, "only the keys"),
    ({"scan/a": {"value": float("nan")}}, "finite numbers"),
    ({"scan/a": {"value": True}}, "finite numbers"),
])
def test_write_headline_refuses_bad_entries_before_writing(tmp_path, entries, message):
    with pytest.raises(DataError, match=message):
        write_headline(tmp_path / "headline", {"ok/first": {"value": 0.0}, **entries})
    assert not (tmp_path / "headline").exists()


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_scan_headline_per_method_over_seeds(tmp_path):
    from equitune.scan.config import ScanParams

    params = load_section(ROOT / "params.yaml", "scan", ScanParams).section
    grid = params.grid.model_copy(update={"splits": ["add_jump"], "cells": ["lstm"], "seeds": [0, 1], "groups":
                                          params.grid.groups.model_copy(update={"add_jump": ["verbs"]})})
    params = params.model_copy(update={"grid": grid})
    for seed, (pretrained, tuned) in enumerate([(0.0, 0.9), (0.5, 0.7)]):
        _write(tmp_path / "pretrain" / f"add_jump-lstm-{seed}.json", {"test_accuracy": pretrained})
        methods = {"equitune": tuned, "equitune_0_steps": 0.25, "equizero": 1.0, "equizero_0_steps": tuned / 2}
        _write(tmp_path / "tune" / f"add_jump-verbs-lstm-{seed}.json",
               {name: {"test_accuracy": value, "validation_accuracy": 0.0} for name, value in methods.items()})
    entries = REPORT.scan_headline(params, tmp_path)
    assert set(entries) >= {f"scan/add_jump-verbs-lstm-{m}" for m in
                            ("pretrained", "equitune", "equitune_0_steps", "equizero", "equizero_0_steps")}
    assert entries["scan/add_jump-verbs-lstm-pretrained"]["value"] == pytest.approx(0.25)
    assert entries["scan/add_jump-verbs-lstm-equitune"]["value"] == pytest.approx(0.8)
    assert entries["scan/add_jump-verbs-lstm-equitune"]["std"] == pytest.approx(math.sqrt(0.02))
    assert entries["scan/add_jump-verbs-lstm-equizero_0_steps"]["value"] == pytest.approx(0.4)


def test_images_headline_rotated_is_the_mean_over_quarter_turns(tmp_path):
    from equitune.images.config import ImagesParams
    from equitune.images.report import ROTATION_NAMES

    params = load_section(ROOT / "params.yaml", "images", ImagesParams).section
    grid = params.grid.model_copy(update={"baseline_methods": ["finetune"], "group_methods": [], "seeds": [0]})
    params = params.model_copy(update={"grid": grid})
    by_element = {name: 0.0 for name in ("hflip", "rot90_after_hflip", "vflip", "rot270_after_hflip")}
    by_element.update(zip(ROTATION_NAMES, (0.8, 0.4, 0.2, 0.2), strict=True))
    for dataset in grid.datasets:
        for backbone in grid.backbones:
            _write(tmp_path / f"{dataset}-{backbone}-finetune-trivial-s0.json",
                   {"test_accuracy_by_element": by_element, "test_accuracy_upright": 0.8})
    entries = REPORT.images_headline(params, tmp_path)
    name = f"images/{grid.datasets[0]}-{grid.backbones[0]}-finetune-trivial"
    assert entries[f"{name}-rotated"] == {"value": pytest.approx(0.4), "std": 0.0, "seeds": 1}
    assert entries[f"{name}-upright"]["value"] == pytest.approx(0.8)


def test_nlg_headline_gap_with_interval_and_perplexity():
    gap = {"value": -0.2, "ci": [-0.3, -0.1], "p_value": 0.02}
    scores = {"lm": {"base": {"gender": {"bias_gap": gap, "demographics": {}}}},
              "control": {"equilm": {"race": {"bias_gap": {"value": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}}}},
              "confidence": {"level": 0.95}}
    perplexity = {"perplexity": {"gender": {"base": {"all": {"perplexity": 44.5, "tokens": 10}}}}, "text": {}}
    assert REPORT.nlg_headline(scores, perplexity) == {
        "nlg/lm-gender-base-bias_gap": {"value": -0.2, "ci_low": -0.3, "ci_high": -0.1, "p_value": 0.02},
        "nlg/control-race-equilm-bias_gap": {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0},
        "nlg/perplexity-gender-base": {"value": 44.5}}


def test_dvc_prints_the_headline_as_a_narrow_table(tmp_path):
    """What `dvc metrics show` prints from a headline folder declared as the only metric: a row per number, the
    columns of COLUMNS (before: one row per cell file and a column per nested key, 22,892 characters wide)."""
    entries = "{'scan/a-equitune': over_seeds([0.5, 0.7]), 'nlg/lm-gender-base-bias_gap': statistic(-0.2, [-0.3, -0.1], 0.02)}"
    (tmp_path / "write.py").write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
                                       "from equitune.pipeline.headline import over_seeds, statistic, write_headline\n"
                                       f"write_headline('metrics/headline', {entries})\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  report:\n    cmd: python write.py\n    deps:\n      - write.py\n"
                                       "    metrics:\n      - metrics/headline:\n          cache: false\n")
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "repro", "-q"], tmp_path)
    shown = run(["dvc", "metrics", "show"], tmp_path).stdout.splitlines()
    assert shown[0].split() == ["Path", *sorted(COLUMNS)]
    rows = {line.split()[0]: line.split()[1:] for line in shown[1:]}
    assert rows["metrics/headline/scan/a-equitune.json"] == ["-", "-", "-", "2", "0.14142", "0.6"]
    assert rows["metrics/headline/nlg/lm-gender-base-bias_gap.json"] == ["-0.1", "-0.3", "0.02", "-", "-", "-0.2"]
    assert max(map(len, shown)) < 120
