"""Growing the SCAN grid (a seed, an rnn, a split, a group) leaves every existing cell up to date.

The SCAN stages of the real dvc.yaml and params.yaml are copied into a throw-away DVC project with stand-in
outputs, recorded as up to date (`dvc commit`, nothing runs); then one grid change at a time, `dvc status` must
name exactly the new cells and the report stage (which alone aggregates the grid).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers.paths import ROOT
from helpers.toy_project import run

pytestmark = pytest.mark.slow  # a dozen dvc invocations

SMALL_GRID = {"splits": ["add_jump"], "rnns": ["lstm"], "seeds": [0],
              "groups": {"add_jump": ["jump_run"], "around_right": []}}


def _write_params(root: Path, grid: dict, edit=None) -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["scan"]["grid"] = grid
    if edit is not None:
        edit(data["scan"])
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _stand_in_outputs(root: Path) -> None:
    """Every dep and out of every stage in the grid, as small files (what the stages would have written)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for entry in [*stage.deps, *stage.outs]:
                path = Path(entry.fs_path)
                if path.exists():
                    continue
                if path.suffix:  # a file: metrics, the report
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n" if path.suffix == ".json" else "stand-in\n")
                else:  # a folder: split data, a model, figures
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stand-in.txt").write_text(stage.name)


def _stale(root: Path) -> set[str]:
    status = json.loads(run(["dvc", "status", "--json"], root).stdout or "{}")
    return set(status)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan-grid")
    stages = {k: v for k, v in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()
              if k.startswith("scan_") or k == "params_check"}
    assert {"params_check", "scan_prepare", "scan_pretrain", "scan_tune_add_jump", "scan_tune_around_right",
            "scan_report"} <= set(stages)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    # Copied with whatever bytecode this checkout holds, and the project's .dvcignore, which keeps it out of hashes.
    shutil.copytree(ROOT / "pipelines", root / "pipelines")
    shutil.copytree(ROOT / "src" / "equitune", root / "src" / "equitune")
    run(["dvc", "init", "--no-scm", "-q"], root)
    shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")
    run(["dvc", "config", "core.check_update", "false"], root)
    _write_params(root, SMALL_GRID)
    _stand_in_outputs(root)
    run(["dvc", "commit", "-f", "-q"], root)
    assert _stale(root) == set()
    return root


def test_growing_the_grid_runs_only_the_new_cells(project):
    """A seed, an rnn, a group and a split at once: only their cells, the split files and the report are stale."""
    grown = {"splits": ["add_jump", "around_right"], "rnns": ["lstm", "gru"], "seeds": [0, 1],
             "groups": {"add_jump": ["jump_run", "verbs"], "around_right": ["left_right"]}}
    # A setting only the other split's cells read must not touch the existing add_jump cells either.
    _write_params(project, grown, lambda scan: scan["tune"]["lr"].update(around_right=0.123))
    try:
        stale = _stale(project)
    finally:
        _write_params(project, SMALL_GRID)
    existing = {"scan_pretrain@add_jump-lstm-0", "scan_tune_add_jump@jump_run-lstm-0"}
    pretrain = {f"scan_pretrain@{split}-{rnn}-{seed}" for split in grown["splits"] for rnn in grown["rnns"]
                for seed in grown["seeds"]}
    tune = {f"scan_tune_{split}@{group}-{rnn}-{seed}" for split, groups in grown["groups"].items()
            for group in groups for rnn in grown["rnns"] for seed in grown["seeds"]}
    # The new split regenerates the split files; the existing split's come out identical, so its cells stay up to
    # date once scan_prepare has run.
    # params_check reruns on any edit of params.yaml; its output is constant, so it makes nothing else stale.
    assert stale == (pretrain | tune | {"params_check", "scan_prepare", "scan_report"}) - existing
    assert _stale(project) == set()


def test_a_setting_every_cell_reads_reruns_them_all(project):
    """The check can fail: a key every cell lists (the model) makes every existing cell stale."""
    _write_params(project, SMALL_GRID, lambda scan: scan["model"].update(hidden_size=65))
    try:
        stale = _stale(project)
    finally:
        _write_params(project, SMALL_GRID)
    assert stale == {"params_check", "scan_pretrain@add_jump-lstm-0", "scan_tune_add_jump@jump_run-lstm-0",
                     "scan_report"}
