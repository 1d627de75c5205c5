"""One stage's MLflow run: :func:`tracked_run` opens it with the project's name, tags and params, and closes it
FINISHED, FAILED or KILLED; :class:`TrackedRun` logs metrics, curves, artifacts and output hashes into it. The
conventions are listed in :mod:`equitune.pipeline.tracking`; the store it writes to is :mod:`.store`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..curves import Curve
from ..reproducibility import mlflow_tags
from .store import (
    EXPERIMENT_PREFIX,
    TASKS,
    bound_server_retries,
    close_orphaned_runs,
    ensure_store,
    is_server,
    is_server_failure,
    permission_denied,
    server_failed,
    tracking_uri,
)

__all__ = ["TrackedRun", "dvc_md5", "params_hash", "run_description", "settings_params", "short_run_name",
           "tracked_run"]


def params_hash(params: Any) -> str:
    """A short, stable hash of validated params (pydantic model or plain data)."""
    data = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _git_dirty() -> dict[str, str]:
    """Whether the code that runs has uncommitted changes: the checkout around the working directory (under a
    queued experiment that is DVC's copy at the experiment's baseline, not the parent repo's HEAD). The commit
    itself is MLflow's tag ``mlflow.source.git.commit`` (its git context, from the stage script's checkout); MLflow
    records no dirty flag."""
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        dirty = ""
    return {"git.dirty": str(bool(dirty)).lower()}


class _Interrupted(BaseException):
    """Raised from the SIGTERM handler so that the run is closed as KILLED on the way out."""


class TrackedRun:
    """Thin handle on the active MLflow run with the project's logging conventions."""

    def __init__(self, run, curve: Curve | None = None):
        import mlflow
        self._run = run
        self.run_id = run.info.run_id
        self._client = mlflow.MlflowClient(mlflow.get_tracking_uri())
        self._last_step = 0
        self._last_timestamp = 0
        self._series: dict[str, tuple[int, float]] = {}  # key logged with a step -> its latest (step, value)
        self.curve = curve

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values as ``str``); MLflow splits them into requests of 100 and truncates a value
        beyond its 6000-character cap."""
        import mlflow
        mlflow.log_params(dict(params))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the numeric entries of ``metrics`` (nested keys joined with '/') at ``step`` (default 0).

        With an explicit ``step``, the run's curve (if it has one) records its columns from ``metrics`` too.
        """
        if step is not None and self.curve is not None:
            self.curve.add(step, _flatten(metrics))
        if step is not None:
            self._series.update({key: (step, float(value)) for key, value in _flatten(metrics).items()
                                 if _is_number(value)})
        self._log(metrics, step if step is not None else 0)

    def log_final(self, metrics: Mapping[str, Any], series: Sequence[str] = ()) -> None:
        """Log the dict written to the stage's DVC metrics file (nested keys joined with '/'), once.

        ``series`` names the top-level entries of ``metrics`` that copy a curve the run already logged step by step
        (``curve`` of a SCAN tune cell: ``curve/<method>/step_<n>_test_accuracy``): they are not logged again, so each
        result has one name in MLflow, the curve one key with its steps as MLflow steps.

        Logged at the last step seen and a later timestamp, so that MLflow's "latest value" of a key that was
        also logged per epoch is the final one, equal to the metrics file; a key whose series already ends there
        with that value (a curve whose last point is the final result) is not logged a second time.
        """
        missing = [name for name in series if name not in metrics]
        if missing:
            raise KeyError(f"log_final: series {missing} are not entries of the metrics ({sorted(metrics)})")
        final = _flatten({key: value for key, value in metrics.items() if key not in series})
        self._log({key: value for key, value in final.items()
                   if not (_is_number(value) and self._series.get(key) == (self._last_step, float(value)))},
                  self._last_step)

    def _log(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric
        # Strictly increasing timestamps: MLflow breaks (step, timestamp) ties by the larger value.
        timestamp = max(int(time.time() * 1000), self._last_timestamp + 1)
        self._last_timestamp, self._last_step = timestamp, max(self._last_step, step)
        # One call: MLflow's client splits the batch into requests of at most 1000 metrics.
        self._client.log_batch(self.run_id, metrics=[Metric(key, float(value), timestamp, step)
                                                     for key, value in _flatten(metrics).items() if _is_number(value)])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file, or a folder with its contents, into the run's artifacts (under ``artifact_path``; a folder
        keeps its own name). For figures and reports: checkpoints and data are referenced with
        :meth:`reference_output` instead of copied."""
        import mlflow
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), "/".join(filter(None, [artifact_path, path.name])))
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path)
        else:
            raise FileNotFoundError(f"cannot log {path} as an artifact: it does not exist")

    def log_artifacts(self, *paths: str | os.PathLike) -> None:
        for path in paths:
            self.log_artifact(path)

    def reference_output(self, path: str | os.PathLike, role: str = "checkpoint") -> str:
        """Tag the run with the DVC hash of ``path`` (a stage output, complete on disk): ``<role>.path`` and
        ``<role>.dvc_md5``, the md5 that dvc.lock will record for it (``....dir`` for a folder), by which
        ``.dvc/cache`` and any DVC remote hold it. Nothing is copied."""
        digest = dvc_md5(path)
        self.set_tags({f"{role}.path": _stage_relative(Path(path)), f"{role}.dvc_md5": digest})
        return digest

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def dvc_md5(path: str | os.PathLike) -> str:
    """The md5 DVC records for ``path`` in dvc.lock (dvc_data's own hashing, as `dvc commit` does it)."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="equitune-dvc-hash-") as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), os.fspath(Path(path).resolve()), fs, "md5", dry_run=True)
    return obj.hash_info.value


def _stage_relative(path: Path) -> str:
    """``path`` as dvc.yaml names it: relative to the stage's working directory (the repository, or DVC's copy of
    it under ``dvc exp run --queue``)."""
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else resolved.as_posix()


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


def settings_params(settings: Mapping[str, Any], cell: Mapping[str, Any]) -> dict[str, str]:
    """The params a run logs: the cell's identity under short keys (``seed``, ``method``, ...: sortable columns
    and the compare view's diff), then the stage's settings with nested keys joined by '/', lists kept whole as one
    value, and the experiment's ``grid`` left out (the grid's lists are not this run's settings; its own
    coordinates are the cell). A settings key that equals a cell key is kept under ``settings/<key>``."""
    params = {str(k): _param_value(v) for k, v in cell.items()}

    def walk(data: Mapping[str, Any], prefix: str) -> None:
        for key, value in data.items():
            name = f"{prefix}{key}"
            if not prefix and key == "grid":
                continue
            if isinstance(value, Mapping):
                walk(value, name + "/")
            else:
                params["settings/" + name if name in params else name] = _param_value(value)

    walk(settings, "")
    return params


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def short_run_name(stage: str, task: str) -> str:
    """A run's name: the cell of a matrix stage (what follows '@', e.g. ``add_jump-lstm-0`` for
    ``scan_pretrain@add_jump-lstm-0``), the stage name for a single stage, ``task`` outside DVC. The full stage name
    stays in the tag ``dvc.stage`` and the run's description."""
    return stage.split("@", 1)[1] if "@" in stage else stage or task


def run_description(stage: str, task: str, profile: str, cell: Mapping[str, str]) -> str:
    """The run's description (markdown, the tag ``mlflow.note.content`` that the run page shows): where it comes
    from and its cell."""
    source = f"DVC stage `{stage}`" if stage else "Run outside DVC"
    words = ", ".join(f"{key} `{value}`" for key, value in cell.items() if key != "profile")
    return f"{source} of the `{task}` experiment, profile `{profile}`." + (f" Cell: {words}." if words else "")


@contextmanager
def tracked_run(task: str, *, profile: str, params: Any, tags: Mapping[str, Any] | None = None,
                run_name: str | None = None, curve: Curve | None = None,
                system_metrics: bool = True) -> Iterator[TrackedRun]:
    """Open an MLflow run for one stage of ``task``; closes it FINISHED, FAILED or KILLED.

    ``params`` is the validated params section the stage used (hashed into a tag, and logged as params without
    its grid lists); ``tags`` carries the grid cell (model, method, group, seed, ...), logged as tags and as short
    params. ``curve`` (a :class:`~equitune.pipeline.curves.Curve`, the stage's plots file) collects what is logged
    with a step and is written, and logged as an artifact, when the run ends well. ``system_metrics`` samples CPU,
    memory, disk and network every 10 s in a thread (a few ms per run; nothing for runs shorter than 10 s).
    """
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    bound_server_retries(uri)
    server = is_server(uri)
    # The system-metrics thread announces its start and stop at INFO on every stage's stderr. Against a server, a
    # failure is reported once, by the stage (below): not also by that thread and by urllib3's retry warnings.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR if server else logging.WARNING)
    if server:
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    run_id: str | None = None
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        raise _Interrupted()

    try:
        ensure_store((*TASKS, task))
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment(EXPERIMENT_PREFIX + task)
        try:
            close_orphaned_runs(mlflow.MlflowClient(uri), experiment.experiment_id, task)
        except MlflowException as error:
            if (denied := permission_denied(error, uri, experiment.name)) is not None:
                raise denied from None
            raise
        stage = os.environ.get("DVC_STAGE", "")
        cell = {k: str(v) for k, v in (tags or {}).items()}
        all_tags = {
            "task": task,
            "profile": profile,
            "dvc.stage": stage or "(not run by dvc)",
            "dvc.exp": os.environ.get("DVC_EXP_NAME", ""),
            "params_hash": params_hash(params),
            "mlflow.note.content": run_description(stage, task, profile, cell),
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            # Which GPUs the process saw (one per queue worker or torchrun rank): runs of a grid spread over GPUs.
            **{f"env.{name}": os.environ[name] for name in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK")
               if name in os.environ},
            **_git_dirty(),
            **mlflow_tags(),
            **cell,
        }
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            try:
                run = mlflow.start_run(run_name=run_name or short_run_name(stage, task), tags=all_tags,
                                       log_system_metrics=system_metrics)
            except MlflowException as error:
                if (denied := permission_denied(error, uri, experiment.name)) is not None:
                    raise denied from None
                raise
            run_id = run.info.run_id
            try:
                handle = TrackedRun(run, curve)
                data = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
                handle.log_params(settings_params(data, cell))
                yield handle
                if curve is not None:
                    handle.log_artifact(curve.write(), "curves")
            except _Interrupted:
                mlflow.end_run(status="KILLED")
                raise SystemExit(128 + signal.SIGTERM) from None
            except KeyboardInterrupt:
                mlflow.end_run(status="KILLED")
                raise
            except BaseException as error:
                if not (server and is_server_failure(error)):  # a failed server: closed once, below
                    mlflow.end_run(status="FAILED")
                raise
            else:
                mlflow.end_run(status="FINISHED")
        except _Interrupted:  # SIGTERM before the run was open: nothing to close, still exit as terminated
            raise SystemExit(128 + signal.SIGTERM) from None
    except BaseException as error:
        if not (server and is_server_failure(error)):
            raise
        closed = run_id is not None and _close_after_failure(uri, run_id, "FAILED")
        raise server_failed(uri, error, run_id, closed) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _close_after_failure(uri: str, run_id: str, status: str) -> bool:
    """After the server failed: stop the run's system-metrics thread (without its last flush, which would retry),
    leave MLflow's active run, and try once, for 5 s, to close the run as ``status``. True when the server took it."""
    import mlflow
    from mlflow.tracking import fluent

    monitor = fluent.run_id_to_system_metrics_monitor.pop(run_id, None)
    if monitor is not None and hasattr(monitor, "_shutdown_event"):
        monitor._shutdown_event.set()  # a daemon thread: it ends at its next check, or with the process
    once = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {name: os.environ.get(name) for name in once}
    os.environ.update(once)
    try:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)  # leaves the active run before its request, which may fail
        else:
            mlflow.MlflowClient(uri).set_terminated(run_id, status=status)
        return True
    except Exception:
        return False
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
