"""A bad params edit loses no committed result, on every path a user takes.

DVC deletes a stage's outputs before running its command, `cache: false` ones included (this project's committed
metrics, curves and reports). Before the params_check stage, `dvc repro -s STAGE` or `dvc exp run` with a malformed
value deleted them and the script's validation then exited 2; only git brought them back. Now:
- `dvc repro` and `dvc exp run` stop at params_check, the first stage, before any other stage is touched;
- `dvc repro -s STAGE` skips params_check: a stage whose committed outputs are `persist: true` never loses them, and
  any other stage that refuses puts back the outputs dvc.lock records (equitune.pipeline.stage.run_stage).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.clones import clone_repository, user_env
from helpers.paths import ROOT
from helpers.toy_project import run

RESULTS = ["metrics", "plots", "reports", "params.checked"]
BAD_KEY = "scan.tune.batch_size"
GOOD_LINE, BAD_LINE = "    batch_size: 64\n", "    batch_size: -64\n"


def _results_changed(clone: Path, env) -> str:
    return run(["git", "status", "--porcelain", "--", *RESULTS], clone, env).stdout


def _edit_badly(clone: Path) -> None:
    params = clone / "params.yaml"
    text = params.read_text()
    tune = text.index("\n  tune:\n", text.index("\nscan:\n"))
    line = text.index(GOOD_LINE, tune)
    params.write_text(text[:line] + BAD_LINE + text[line + len(GOOD_LINE):])


def _refused(result, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert BAD_KEY in output and "greater than or equal to 1" in output, output
    for text in expected:
        assert text in output, output


@pytest.mark.slow
def test_a_bad_edit_loses_no_committed_result_on_any_path(tmp_path):
    clone = clone_repository(tmp_path / "checkout" / "equitune")
    env = user_env(clone)
    assert _results_changed(clone, env) == ""
    _edit_badly(clone)

    # dvc repro: the first stage refuses; no other stage runs.
    whole = run(["dvc", "repro"], clone, env, check=False, timeout=600)
    _refused(whole, "failed to reproduce 'params_check'")
    assert whole.stdout.count("Running stage") == 1, whole.stdout
    assert _results_changed(clone, env) == ""

    # dvc repro -s of a report stage (not persisted folders): it refuses and puts back what the lock records.
    report = run(["dvc", "repro", "-s", "scan_report"], clone, env, check=False, timeout=600)
    _refused(report, "back in place", "reports/scan.md")
    assert _results_changed(clone, env) == ""

    # dvc repro -s of a training cell whose inputs this clone never computed: DVC fails before the command runs,
    # after deleting what it may; the committed metrics and curve are persist: true.
    cell = "scan_tune_add_jump@jump_run-lstm-0"
    tuned = run(["dvc", "repro", "-s", cell], clone, env, check=False, timeout=600)
    assert tuned.returncode != 0, tuned.stdout + tuned.stderr
    assert _results_changed(clone, env) == ""

    # dvc exp run, the edit made by DVC itself (-S) on the committed params: refused at params_check.
    run(["git", "checkout", "--", "params.yaml"], clone, env)
    experiment = run(["dvc", "exp", "run", "-S", f"{BAD_KEY}=-64"], clone, env, check=False, timeout=600)
    _refused(experiment, "params_check")
    assert _results_changed(clone, env) == ""


def test_committed_outputs_persist_wherever_the_run_cache_is_off_anyway():
    """DVC 3.67 keeps a stage out of its run-cache when it has a `cache: false` output that is neither a metric nor a
    plot; persist: true keeps a stage out of it too. So committed files are persist: true exactly in those stages
    (nothing is lost to the run-cache), folders never (a kept folder would keep files a run no longer makes), and
    the other stages (those without committed files) keep their run-cache. The per-cell metrics files are plain
    outputs (only the headline folder is a metric), so every stage that writes one is out of the run-cache."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = list(repo.index.stages)
    persisted = 0
    for stage in stages:
        run_cache_off = any(not out.use_cache and not (out.is_metric or out.is_plot) for out in stage.outs)
        for out in stage.outs:
            folder = (ROOT / out.def_path).is_dir() or not Path(out.def_path).suffix  # made by the stage's run
            expected = run_cache_off and not out.use_cache and not folder
            assert out.persist == expected, (
                f"{stage.name}: {out.def_path} persist={out.persist}, expected {expected} (run-cache "
                f"{'off' if run_cache_off else 'on'}, {'folder' if folder else 'file'}, cache={out.use_cache})")
            persisted += out.persist
    assert persisted > 20, "the rule would be checked on nothing"
    names = {stage.name.split("@")[0] for stage in stages
             if not any(not out.use_cache and not (out.is_metric or out.is_plot) for out in stage.outs)}
    assert {"scan_prepare", "images_prepare", "nlg_prompts"} <= names
