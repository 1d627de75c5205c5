"""Every MLflow convention of the project, in one place.

- Store: ``$MLFLOW_TRACKING_URI`` when set, else SQLite ``mlflow.db`` at the repository root. The root comes
  from ``DVC_ROOT`` (set by DVC for every stage, and pointing at the real repo even under ``dvc exp run
  --queue``, whose stages run in a temporary copy), else from the current git checkout.
- The database and the experiments are created once, under a file lock, before any run writes: several
  processes creating a fresh SQLite store at once crash on the schema migration.
- One experiment per task (``equitune-scan``, ``equitune-images``, ``equitune-nlg``); run name = DVC stage name.
- Tags: task, model, method, group, seed, profile, git commit and dirty flag, dvc stage, dvc experiment, params hash.
- A run that raises ends FAILED; SIGTERM or Ctrl-C ends it KILLED (and the process still exits non-zero).
- The pipeline only writes here. DVC's metrics files are the source of truth; :meth:`TrackedRun.log_final`
  logs the very dict that the stage writes to its metrics file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["TrackedRun", "tracked_run", "tracking_uri", "ensure_store", "params_hash", "repo_root", "EXPERIMENT_PREFIX"]

EXPERIMENT_PREFIX = "equitune-"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def repo_root() -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip()).resolve()
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd().resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def params_hash(params: Any) -> str:
    """A short, stable hash of validated params (pydantic model or plain data)."""
    data = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=repo_root()).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}


def ensure_store(tasks: list[str] | tuple[str, ...] = ("scan", "images", "nlg")) -> None:
    """Create the store and one experiment per task, once, under a lock (safe to call from parallel stages)."""
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    lock_path = (repo_root() / ".mlflow.lock") if uri.startswith("sqlite:///") else Path("/tmp/equitune-mlflow.lock")
    with FileLock(str(lock_path), timeout=300):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        for task in tasks:
            name = EXPERIMENT_PREFIX + task
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name)


class _Interrupted(BaseException):
    """Raised from the SIGTERM handler so that the run is closed as KILLED on the way out."""


class TrackedRun:
    """Thin handle on the active MLflow run with the project's logging conventions."""

    def __init__(self, run):
        self._run = run
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow
        flat = _flatten(params)
        # MLflow caps a param value at 6000 chars; long lists are still readable up to there.
        mlflow.log_params({k: (str(v)[:6000]) for k, v in flat.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in _flatten(metrics).items() if _is_number(v)}, step=step)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        """Log the dict written to the stage's DVC metrics file (nested keys joined with '/')."""
        self.log_metrics(metrics)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        import mlflow
        mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


@contextmanager
def tracked_run(task: str, *, profile: str, params: Any, tags: Mapping[str, Any] | None = None,
                run_name: str | None = None) -> Iterator[TrackedRun]:
    """Open an MLflow run for one stage of ``task``; closes it FINISHED, FAILED or KILLED.

    ``params`` is the validated params section the stage used (logged flat, and hashed into a tag).
    ``tags`` carries the grid cell (model, method, group, seed, ...).
    """
    import mlflow

    ensure_store()
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT_PREFIX + task)
    stage = os.environ.get("DVC_STAGE", "")
    all_tags = {
        "task": task,
        "profile": profile,
        "dvc.stage": stage or "(not run by dvc)",
        "dvc.exp": os.environ.get("DVC_EXP_NAME", ""),
        "params_hash": params_hash(params),
        **_git_state(),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        raise _Interrupted()

    signal.signal(signal.SIGTERM, on_sigterm)
    run = mlflow.start_run(run_name=run_name or stage or task, tags=all_tags)
    try:
        handle = TrackedRun(run)
        data = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
        handle.log_params(data)
        yield handle
    except (_Interrupted, KeyboardInterrupt):
        mlflow.end_run(status="KILLED")
        raise SystemExit(143)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)
