"""The committed dvc.lock holds in every clone: no stage looks stale that is not.

A lock written on a machine that writes bytecode once recorded ``__pycache__`` in the code folders' hashes: every
clone saw 51 of 51 stages with changed deps, before and after its own Python wrote bytecode. Here a clone at another
path writes bytecode everywhere and ``dvc status`` may report only outputs this clone has not computed.
"""

from __future__ import annotations

import pytest
import yaml

from helpers.clones import clone_repository, dvc_status, stage_outputs, stale_code_or_params, user_env, write_bytecode
from helpers.paths import ROOT


@pytest.mark.slow
def test_a_fresh_clone_that_writes_bytecode_sees_no_changed_code_or_params(tmp_path):
    clone = clone_repository(tmp_path / "another place" / "equitune")
    env = user_env(clone)
    write_bytecode(clone, env)
    status = dvc_status(clone, env)
    stale = stale_code_or_params(status, stage_outputs(clone))
    assert not stale, f"{len(stale)} stage(s) stale in a fresh clone with bytecode: " + "; ".join(
        f"{stage}: {', '.join(problems)}" for stage, problems in sorted(stale.items())[:10])


def test_the_status_check_sees_a_stale_stage():
    """The check itself: a modified code folder, a changed param and a changed command are reported; a missing
    upstream output (or a folder inside one) and outputs not in the cache are not."""
    status = {
        "a": [{"changed deps": {"data/x": "deleted"}}, {"changed outs": {"models/a": "not in cache"}}],
        "b": [{"changed deps": {"src/equitune/core": "modified"}}],
        "c": [{"changed deps": {"params.yaml": {"scan.tune": "modified"}}}],
        "d": ["changed command"],
        "e": [{"changed deps": {"data/never-an-output": "deleted"}}],
        "f": [{"changed deps": {"data/x/split": "deleted"}}],  # inside an upstream output folder
        "g": [{"changed deps": {"data/xy": "deleted"}}],  # a sibling that only shares the prefix
    }
    stale = stale_code_or_params(status, {"data/x", "models/a"})
    assert sorted(stale) == ["b", "c", "d", "e", "g"]


def _lock_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]


def test_every_lock_entry_is_a_stage_of_dvc_yaml_with_the_same_paths():
    """No entry of an old grid or a renamed stage (28 such entries were committed once), and no lock entry naming a
    dep or an output its stage no longer has. `python -m equitune.pipeline.lockfile prune` removes orphans."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        defined = {stage.name: stage for stage in repo.index.stages}
    locked = _lock_stages()
    assert sorted(set(locked) - set(defined)) == [], "lock entries of stages dvc.yaml no longer defines"
    assert sorted(set(defined) - set(locked)) == [], "stages never run for the committed lock"
    for name, entry in locked.items():
        stage = defined[name]
        deps = {dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)}
        assert {dep["path"] for dep in entry.get("deps", [])} == deps, f"{name}: deps differ from dvc.yaml"
        assert {out["path"] for out in entry.get("outs", [])} == {out.def_path for out in stage.outs}, name
        params = {key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params}
        assert {key for keys in entry.get("params", {}).values() for key in keys} == params, name


def test_no_bytecode_or_tool_cache_is_hashed():
    """.dvcignore keeps what Python and the tools write beside the sources out of every code folder's hash: the lock
    counts exactly the folder's files other than bytecode."""
    ignored = (ROOT / ".dvcignore").read_text().split()
    for pattern in ("__pycache__/", "*.py[cod]", ".pytest_cache/", ".ruff_cache/"):
        assert pattern in ignored, pattern
    folders = 0
    for name, entry in _lock_stages().items():
        for dep in entry.get("deps", []):
            folder = ROOT / dep["path"]
            if dep["path"].startswith("src/") and folder.is_dir():
                folders += 1
                sources = [p for p in folder.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
                assert dep["nfiles"] == len(sources), (
                    f"{name}: the lock hashes {dep['nfiles']} files in {dep['path']}, which holds {len(sources)} "
                    "besides bytecode")
    assert folders, "no code folder among the locked deps: the check would prove nothing"
