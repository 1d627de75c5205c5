"""The curve files and DVC's plots agree: every `--curve` a stage writes is an uncached output of that stage and
lies in a folder that dvc.yaml's top-level `plots:` declares (x, y and axis labels), so `dvc plots show` draws it."""

from __future__ import annotations

from pathlib import Path

import yaml

from helpers.paths import ROOT, dvc_commands


def _top_level_plots() -> dict[str, dict]:
    return {path: props for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
            for path, props in entry.items()}


def _stage_outs() -> dict[str, dict[str, dict]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.name: {out.def_path: {"cache": out.use_cache} for out in stage.outs}
                for stage in repo.index.stages}


def test_every_curve_is_an_uncached_output_in_a_declared_plots_folder():
    plots, outs = _top_level_plots(), _stage_outs()
    curves = {}
    for stage, words in dvc_commands().items():
        if "--curve" in words:
            curves[stage] = words[words.index("--curve") + 1]
    assert {stage.split("@")[0] for stage in curves} == {
        "scan_pretrain", "scan_tune_add_jump", "scan_tune_around_right", "images_tune_baseline", "images_tune_group"}
    for stage, curve in curves.items():
        assert outs[stage].get(curve) == {"cache": False}, f"{stage}: {curve} is not an uncached out"
        assert str(Path(curve).parent) in plots, f"{stage}: {curve} is in no folder under plots:"
    assert set(plots) == {str(Path(curve).parent) for curve in curves.values()}
    for folder, props in plots.items():
        assert {"x", "y", "x_label", "y_label"} <= set(props), folder
