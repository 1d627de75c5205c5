"""A scratch clone of the repository set to the paper profile (plus overlays), and `dvc repro` in it, for the
paper smoke tests. The clone runs its own code (PYTHONPATH=<clone>/src) with the test's virtual environment."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from .paths import ROOT
from .toy_project import clean_env, copy_empty_store, run

PAPER_OVERLAYS = ("profiles/paper.yaml", "profiles/paper-smoke.yaml")


def scratch_clone(dest: Path) -> Path:
    """A clone of the committed HEAD with an empty MLflow store, no DVC cache and no outputs: the committed
    (default-profile) metrics and reports are deleted, so that a file no stage writes cannot pass for one."""
    run(["git", "clone", "-q", str(ROOT), str(dest)], ROOT)
    for folder in ("metrics", "reports"):
        shutil.rmtree(dest / folder, ignore_errors=True)
    copy_empty_store(dest / "mlflow.db")
    return dest


def compose_params(clone: Path, *extra_overlays: dict) -> dict:
    """params.yaml of the clone := its params.yaml + the paper and smoke overlays + ``extra_overlays``."""
    files = list(PAPER_OVERLAYS)
    for i, overlay in enumerate(extra_overlays):
        path = clone.parent / f"{clone.name}-overlay-{i}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        files.append(str(path))
    run(["python", "-m", "equitune.params", "compose", *files, "-o", "params.yaml"], clone, stage_env(clone))
    return yaml.safe_load((clone / "params.yaml").read_text())


def stage_env(clone: Path, **extra: str) -> dict[str, str]:
    return clean_env(PYTHONPATH=str(clone / "src"), OMP_WAIT_POLICY="PASSIVE", PYTHONHASHSEED="0", **extra)


def dvc_repro(clone: Path, env: dict[str, str], timeout: float,
              jobs: int | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """`dvc repro`, or with ``jobs`` scripts/repro.py (that many stages side by side, as `make repro` runs them);
    returns the result, the stages in the order they started, the wall and CPU seconds and the load."""
    command = ["dvc", "repro"] if jobs is None else ["python", str(ROOT / "scripts" / "repro.py"), "-j", str(jobs)]
    start, cpu_start = time.monotonic(), _children_cpu()
    result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)
    took, cpu = time.monotonic() - start, _children_cpu() - cpu_start
    stages = re.findall(r"^(?:\[repro [0-9:]+\] )?Running stage '([^']+)'", result.stdout, flags=re.MULTILINE)
    return result, {"stages": stages, "seconds": took, "cpu_seconds": cpu, "load": os.getloadavg()}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_outputs(clone: Path) -> dict[str, dict[str, list[str]]]:
    """Every stage of the clone's dvc.yaml (matrix cells expanded) -> its metrics files and other outputs."""
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        result = {}
        for stage in repo.index.stages:
            metrics = [str(out.fs_path) for out in stage.outs if out.metric]
            others = [str(out.fs_path) for out in stage.outs if not out.metric]
            result[stage.name] = {"metrics": metrics, "outs": others}
        return result


def json_files(path: Path) -> list[Path]:
    """A metrics output's JSON files: the file itself, or every JSON file under a folder output (metrics/headline)."""
    return sorted(path.rglob("*.json")) if path.is_dir() else [path]


def numbers_in(path: Path) -> int:
    """How many numeric leaves a metrics JSON file has."""
    def count(value) -> int:
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        if isinstance(value, list):
            return sum(count(v) for v in value)
        return int(isinstance(value, (int, float)) and not isinstance(value, bool))
    return count(json.loads(Path(path).read_text()))
