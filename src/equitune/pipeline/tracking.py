"""Every MLflow convention of the project, in one place.

- Store: ``$MLFLOW_TRACKING_URI`` when set, else SQLite ``mlflow.db`` at the repository root. The root comes
  from ``DVC_ROOT`` (set by DVC for every stage, and pointing at the real repo even under ``dvc exp run
  --queue``, whose stages run in a temporary copy), else from the current git checkout.
- The database and the experiments are created once, under a file lock, before any run writes: several
  processes creating a fresh SQLite store at once crash on the schema migration.
- One experiment per task (``equitune-scan``, ``equitune-images``, ``equitune-nlg``); run name = DVC stage name.
- Tags: task, model, method, group, seed, profile, git commit and dirty flag, dvc stage, dvc experiment, params hash,
  and the CPU kernels the run used (``cpu.isa``, ``cpu.capability``, ``cpu.onednn_isa``, ``cpu.mkl_cbwr``,
  ``cpu.vendor``, ``cpu.model``; see :mod:`equitune.pipeline.reproducibility`).
- A run that raises ends FAILED; SIGTERM or Ctrl-C ends it KILLED (and the process still exits non-zero).
  A run left RUNNING by a process that died without a word (SIGKILL, OOM) is closed as KILLED by the next
  run of the same task on the same host.
- Artifacts of a local SQLite store go to ``mlartifacts/`` beside the database (never to the stage's working
  directory, which is a throw-away copy under ``dvc exp run --queue``).
- The pipeline only writes here. DVC's metrics files are the source of truth; :meth:`TrackedRun.log_final`
  logs the very dict that the stage writes to its metrics file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .io import pid_alive
from .reproducibility import mlflow_tags

__all__ = ["TrackedRun", "tracked_run", "tracking_uri", "ensure_store", "params_hash", "repo_root", "EXPERIMENT_PREFIX",
           "TASKS"]

EXPERIMENT_PREFIX = "equitune-"
TASKS = ("scan", "images", "nlg")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def repo_root() -> Path:
    """The real repository root: DVC_ROOT (which dvc 3.67 points at the parent repo for queued and temp
    experiments too, see tests/test_pipeline_infra.py), else the git checkout around the working directory."""
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
    """Commit and dirty flag of the code that runs: the checkout around the working directory (under a queued
    experiment that is DVC's copy at the experiment's baseline, not the parent repo's HEAD)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def ensure_store(tasks: list[str] | tuple[str, ...] = TASKS) -> None:
    """Create the store and one experiment per task, once, under a lock (safe to call from parallel stages).

    The lock lives beside the SQLite file, so every process writing to the same database takes the same lock
    whatever its repository. For a server store the lock only serialises this machine; a creation race with
    another machine is caught and resolved by reading the experiment back.
    """
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    database = _sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        lock_path = database.with_name(database.name + ".lock")
    else:
        lock_path = Path("/tmp/equitune-mlflow.lock")
    with FileLock(str(lock_path), timeout=300):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        for task in dict.fromkeys(tasks):
            name = EXPERIMENT_PREFIX + task
            if client.get_experiment_by_name(name) is not None:
                continue
            location = (database.parent / "mlartifacts" / name).as_uri() if database is not None else None
            try:
                client.create_experiment(name, artifact_location=location)
            except MlflowException:
                if client.get_experiment_by_name(name) is None:
                    raise


def _close_orphaned_runs(client, experiment_id: str, task: str) -> None:
    """Runs of this task left RUNNING by a dead process on this host (SIGKILL, OOM, power loss) end KILLED."""
    host = socket.gethostname()
    orphans = client.search_runs([experiment_id], filter_string=(
        f"attributes.status = 'RUNNING' and tags.host = '{host}' and tags.task = '{task}'"))
    for run in orphans:
        try:
            pid = int(run.data.tags.get("pid", ""))
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")


class _Interrupted(BaseException):
    """Raised from the SIGTERM handler so that the run is closed as KILLED on the way out."""


class TrackedRun:
    """Thin handle on the active MLflow run with the project's logging conventions."""

    def __init__(self, run):
        import mlflow
        self._run = run
        self.run_id = run.info.run_id
        self._client = mlflow.MlflowClient(mlflow.get_tracking_uri())
        self._last_step = 0
        self._last_timestamp = 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow
        flat = _flatten(params)
        # MLflow caps a param value at 6000 chars; long lists are still readable up to there.
        mlflow.log_params({k: (str(v)[:6000]) for k, v in flat.items()})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the numeric entries of ``metrics`` (nested keys joined with '/') at ``step`` (default 0)."""
        self._log(metrics, step if step is not None else 0)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        """Log the dict written to the stage's DVC metrics file (nested keys joined with '/').

        Logged at the last step seen and a later timestamp, so that MLflow's "latest value" of a key that was
        also logged per epoch is the final one, equal to the metrics file.
        """
        self._log(metrics, self._last_step)

    def _log(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric
        # Strictly increasing timestamps: MLflow breaks (step, timestamp) ties by the larger value.
        timestamp = max(int(time.time() * 1000), self._last_timestamp + 1)
        self._last_timestamp, self._last_step = timestamp, max(self._last_step, step)
        batch = [Metric(key, float(value), timestamp, step)
                 for key, value in _flatten(metrics).items() if _is_number(value)]
        for start in range(0, len(batch), 1000):  # MLflow's per-request cap on metrics
            self._client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        import mlflow
        mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists to 'a/b/0' keys: the same names scripts/check_reproduce.py gives metrics."""
    flat: dict[str, Any] = {}
    items = data.items() if isinstance(data, Mapping) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)):
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

    ensure_store((*TASKS, task))
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(EXPERIMENT_PREFIX + task)
    _close_orphaned_runs(mlflow.MlflowClient(tracking_uri()), experiment.experiment_id, task)
    stage = os.environ.get("DVC_STAGE", "")
    all_tags = {
        "task": task,
        "profile": profile,
        "dvc.stage": stage or "(not run by dvc)",
        "dvc.exp": os.environ.get("DVC_EXP_NAME", ""),
        "params_hash": params_hash(params),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        **_git_state(),
        **mlflow_tags(),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        raise _Interrupted()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run = mlflow.start_run(run_name=run_name or stage or task, tags=all_tags)
        try:
            handle = TrackedRun(run)
            data = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
            handle.log_params(data)
            yield handle
        except _Interrupted:
            mlflow.end_run(status="KILLED")
            raise SystemExit(128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        else:
            mlflow.end_run(status="FINISHED")
    except _Interrupted:  # SIGTERM before the run was open: nothing to close, still exit as terminated
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
