"""Helpers for the infrastructure tests: a throw-away git + DVC project around tests/helpers/assets/toy_stage.py.

Everything lives under a pytest tmp_path; the MLflow store is the toy project's own mlflow.db (from DVC_ROOT),
never the real repository's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ASSETS = Path(__file__).resolve().parent / "assets"
VENV_BIN = str(Path(sys.executable).parent)

DVC_YAML = """\
stages:
  train:
    cmd: python toy_stage.py --curve plots/toy/train.csv --figure figures/loss.png
    deps:
      - toy_stage.py
    params:
      - toy
    outs:
      - outputs/model.ckpt
      - plots/toy/train.csv:
          cache: false
      - figures/loss.png:
          cache: false
    metrics:
      - metrics/toy.json:
          cache: false
plots:
  - plots/toy:
      x: epoch
      y: loss
      x_label: epoch
      y_label: training loss
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: telemetry off, and nothing that would point at the real repo's store.

    DVC_ROOT must not leak in: dvc 3.67 keeps an inherited DVC_ROOT instead of setting its own.
    """
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "TOY_PROGRESS", "TOY_GATE"):
        env.pop(name, None)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1",
               PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="t@t")
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


_template_store: Path | None = None


def copy_empty_store(dest: Path) -> Path:
    """Put an empty, fully migrated MLflow SQLite store at ``dest``.

    Creating a store runs every schema migration (10+ s on a busy 2-core machine); it is done once per test
    process and copied. Experiments are not in the template: the code under test creates them.
    """
    global _template_store
    if _template_store is None:
        folder = Path(tempfile.mkdtemp(prefix="equitune-template-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        import mlflow
        mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _template_store = folder / "mlflow.db"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_template_store, dest)
    return dest


def write_params(root: Path, seed: int = 0, epochs: int = 3, epoch_seconds: float = 0.0, **extra) -> None:
    toy = {"seed": seed, "epochs": epochs, "epoch_seconds": epoch_seconds, **extra}
    (root / "params.yaml").write_text(yaml.safe_dump({"toy": toy}, sort_keys=False))


MATRIX_DVC_YAML = """\
stages:
  train:
    matrix:
      seed: [1, 2]
    cmd: python toy_stage.py --seed ${item.seed} --out outputs/model-${item.seed}.ckpt --metrics metrics/toy-${item.seed}.json
    deps:
      - toy_stage.py
    params:
      - toy
    outs:
      - outputs/model-${item.seed}.ckpt
    metrics:
      - metrics/toy-${item.seed}.json:
          cache: false
"""
"""The toy stage as a grid of two cells (train@1, train@2), each with a cached model and an uncached metrics file."""


def make_toy_project(root: Path, fresh_store: bool = False, dvc_yaml: str = DVC_YAML, **params) -> Path:
    """A committed git repo with `dvc init`, the toy stage and its dvc.yaml (``dvc_yaml``); returns root.

    Unless ``fresh_store``, an empty migrated MLflow store is put at root/mlflow.db (see copy_empty_store).
    """
    root.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["dvc", "config", "core.check_update", "false"], root, env)
    shutil.copy(ASSETS / "toy_stage.py", root / "toy_stage.py")
    (root / "dvc.yaml").write_text(dvc_yaml)
    write_params(root, **params)
    (root / ".gitignore").write_text("mlflow.db\nmlflow.db.lock\nmlartifacts/\nmlruns/\n")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "toy project"], root, env)
    if not fresh_store:
        copy_empty_store(root / "mlflow.db")
    return root


def temp_files(root: Path) -> list[Path]:
    """Leftover temporary files of atomic writes anywhere in the project (DVC's and git's own dirs aside)."""
    return [p for p in root.rglob("*.tmp") if not {".dvc", ".git"} & set(p.relative_to(root).parts)]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def progress_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def mlflow_runs(store: Path, experiment: str = "equitune-toy"):
    """All runs of the toy experiment in the SQLite store at ``store`` (a fresh client, read only)."""
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
