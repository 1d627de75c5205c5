"""Running a stage script as DVC runs it, in one process or as a torchrun job of several (gloo on the CPU), for the
tests that compare the two (tests/*/test_*_distributed.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from .paths import ROOT
from .toy_project import clean_env, mlflow_runs


def run_script(script: str, args: list[str], cwd: Path, processes: int = 1, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """``pipelines/<script>.py args`` in ``cwd`` (its own MLflow store), as one process or under torchrun."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = clean_env(DVC_ROOT=str(cwd), MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}", OMP_NUM_THREADS="1")
    return subprocess.run([*launcher, str(ROOT / "pipelines" / f"{script}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def max_weight_difference(one: dict, two: dict) -> float:
    """Largest |difference| over every floating tensor of two state dicts with the same keys."""
    assert one.keys() == two.keys()
    return max((one[k].double() - two[k].double()).abs().max().item() for k in one if one[k].is_floating_point())


def load_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def world_sizes_logged(store: Path, experiment: str, method: str) -> list[str]:
    """The ``world_size`` tag of every run of ``method`` (the cell's tag) in the experiment: one run per job,
    whatever its number of ranks."""
    return sorted(run.data.tags["world_size"] for run in mlflow_runs(store, experiment)
                  if run.data.tags.get("method") == method)
