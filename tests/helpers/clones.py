"""Clones of this repository used the way users use them: another path, bytecode written, its own code imported.

The machines the suite runs on set ``PYTHONDONTWRITEBYTECODE`` and run one checkout at one path; users do neither.
A promise about clones (the committed lock holds, the shared run-cache restores, a bad edit loses nothing) is
tested in a ``git clone`` of the committed ``HEAD`` at a temporary path, with bytecode allowed and the clone's own
``src`` first on the import path (the virtual environment's editable install points at this checkout).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.paths import ROOT
from helpers.toy_project import clean_env, run


def clone_repository(dest: Path) -> Path:
    """``git clone`` of this repository's committed ``HEAD`` at ``dest`` (a path unlike this checkout's)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=300)
    return dest


def user_env(clone: Path, **extra: str) -> dict[str, str]:
    """A user's environment in ``clone``: bytecode allowed, the clone's package imported, telemetry off."""
    env = clean_env(PYTHONPATH=str(clone / "src"), **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def write_bytecode(clone: Path, env: dict[str, str]) -> None:
    """What a user's Python leaves behind: ``__pycache__`` beside every module it imports (here: all of them)."""
    run([sys.executable, "-m", "compileall", "-q", "src", "pipelines", "scripts", "tests"], clone, env)
    run([sys.executable, "-c", "import equitune.params, equitune.pipeline.stage"], clone, env)
    written = list((clone / "src" / "equitune" / "pipeline" / "__pycache__").glob("*.pyc"))
    assert written, "no bytecode was written: the check would prove nothing"


def dvc_status(clone: Path, env: dict[str, str], *targets: str) -> dict:
    return json.loads(run(["dvc", "status", "--json", *targets], clone, env, timeout=300).stdout or "{}")


def stage_outputs(clone: Path) -> set[str]:
    """Every output path of every stage of ``clone``'s dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        return {out.def_path for stage in repo.index.stages for out in stage.outs}


def stale_code_or_params(status: dict, outputs: set[str]) -> dict[str, list[str]]:
    """From ``dvc status --json``: per stage, every change other than outputs that this clone never computed.

    Allowed: outputs missing from the cache or the workspace, and deps that are such outputs of another stage
    (``deleted``) or lie inside one (``data/scan/add_jump`` of ``data/scan``). Anything else (a modified code
    folder, a changed params key, a changed command) is stale.
    """
    stale: dict[str, list[str]] = {}
    for stage, changes in status.items():
        problems = []
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                problems.append(change)
                continue
            for kind, paths in change.items():
                for path, state in paths.items():
                    if kind == "changed outs" and state in ("not in cache", "deleted"):
                        continue
                    if kind == "changed deps" and state == "deleted" and _within(path, outputs):
                        continue
                    problems.append(f"{kind}: {path}: {state}")
        if problems:
            stale[stage] = problems
    return stale


def _within(path: str, outputs: set[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)
