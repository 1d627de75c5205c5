"""Every MLflow convention of the project, in one place.

- Store: ``$MLFLOW_TRACKING_URI`` when set (a team's ``mlflow server``, with ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` or ``~/.mlflow/credentials``: MLflow's own client settings), else SQLite
  ``mlflow.db`` at the repository root. The root comes
  from ``DVC_ROOT`` (set by DVC for every stage, and pointing at the real repo even under ``dvc exp run
  --queue``, whose stages run in a temporary copy), else from the current git checkout.
- A server is checked before anything else (one request, no retries): unreachable, credentials refused or no
  permission to write is a :class:`TrackingServerError` naming what to fix, raised before the stage does any work.
- MLflow's client retries a failing server for minutes (7 retries, backoff factor 2, 120 s timeout). For a server
  URI the project bounds that to seconds (:data:`SERVER_RETRY_DEFAULTS`, each overridable by setting the variable):
  a server that fails mid-run (its database down, the process gone) ends the stage with a
  :class:`TrackingServerError` (one message, exit 2) naming the server and what to do; the run is closed FAILED
  when the server still answers, else as KILLED by the next attempt (below).
- The database and the experiments are created once, under a file lock, before any run writes: several
  processes creating a fresh SQLite store at once crash on the schema migration.
- One experiment per task (``equitune-scan``, ``equitune-images``, ``equitune-nlg``, ``equitune-report``), each with
  a description and a "Cells" view of its runs table (:mod:`.mlflow_views`); run name = the cell (the matrix
  item of the DVC stage, :func:`short_run_name`), the full stage name in the tag ``dvc.stage`` and in the run's
  description (``mlflow.note.content``, markdown, shown on the run page).
- Tags: task, the cell (model, method, group, seed, ...), profile, git commit and dirty flag, dvc stage, dvc
  experiment, params hash, and the CUDA_VISIBLE_DEVICES / LOCAL_RANK the process ran with (which GPU a queue worker
  or rank used). Params: the cell again under short keys, then the stage's settings without the grid.
- Per-step values go to MLflow's metric history and, for a stage with a curve file, to that DVC plots file
  (:mod:`.curves`): one key per curve, its steps as MLflow steps. Final values are logged once, under the keys of
  the metrics file (nested keys joined by '/'); the metrics file's copy of a curve is not logged again
  (:meth:`TrackedRun.log_final`). Figures and reports are artifacts; checkpoints and data are referenced by their
  DVC hash (a tag), never copied. System metrics (CPU, memory, disk, network) are sampled every 10 s.
- Tags also name the CPU kernels the run used (``cpu.isa``, ``cpu.capability``, ``cpu.onednn_isa``, ``cpu.mkl_cbwr``,
  ``cpu.vendor``, ``cpu.model``; see :mod:`equitune.pipeline.reproducibility`).
- A run that raises ends FAILED; SIGTERM or Ctrl-C ends it KILLED (and the process still exits non-zero).
  A run left RUNNING by a process that died without a word (SIGKILL, OOM) is closed as KILLED by the next
  run of the same task on the same host.
- Artifacts of a local SQLite store go to ``mlartifacts/`` beside the database (never to the stage's working
  directory, which is a throw-away copy under ``dvc exp run --queue``). MLflow stores an experiment's artifact
  location as an absolute ``file://`` URI; a store copied or moved with its checkout still names the original
  folder, so :func:`ensure_store` points it (and the runs' artifact URIs) back at ``mlartifacts/`` beside the
  database in use.
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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .curves import Curve
from .io import pid_alive
from .mlflow_views import experiment_tags
from .reproducibility import mlflow_tags

__all__ = ["TrackedRun", "TrackingServerError", "tracked_run", "tracking_uri", "ensure_store", "check_tracking_server",
           "params_hash", "repo_root", "dvc_md5", "settings_params", "EXPERIMENT_PREFIX", "TASKS",
           "SERVER_RETRY_DEFAULTS", "TEAM_TASKS", "short_run_name", "run_description"]

EXPERIMENT_PREFIX = "equitune-"
TASKS = ("scan", "images", "nlg")
TEAM_TASKS = (*TASKS, "report")
"""Every task a pipeline stage logs to: a team's writer needs EDIT on each of these experiments."""

SERVER_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",     # 4 attempts ...
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # ... 0, 2 and 4 s apart (urllib3: factor * 2 ** (n - 1), first 0)
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",        # seconds a request may wait for an answer
}
"""MLflow's client settings for a tracking server, unless the environment sets them: a dead server or database is
reported in seconds, not after MLflow's default of minutes of retries."""

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def repo_root() -> Path:
    """The real repository root: DVC_ROOT (which dvc 3.67 points at the parent repo for queued and temp
    experiments too, see tests/dvc/test_pipeline_infra.py), else the git checkout around the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip()).resolve()
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd().resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


class TrackingServerError(ConfigError):
    """The tracking server named by MLFLOW_TRACKING_URI cannot be used: unreachable, credentials refused, or no
    permission to write; the message says which, and what to set."""


_START_OR_FIX = ("start it (`make team-server`, see the README's 'Scaling out'), correct MLFLOW_TRACKING_URI, "
                 "or unset MLFLOW_TRACKING_URI to log to the local store mlflow.db")


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_server_retries(uri: str) -> None:
    """For a server ``uri``, MLflow's retry settings from :data:`SERVER_RETRY_DEFAULTS` where the environment does
    not set them (MLflow reads them at every request)."""
    if _is_server(uri):
        for name, value in SERVER_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)


def _is_server_failure(error: BaseException) -> bool:
    """An error of the tracking server itself (unreachable, 5xx after the retries, a timeout), as opposed to a
    request it refused (bad parameter, permission) or an error of the stage."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.RequestException):
        return True
    if not isinstance(error, MlflowException):
        return False
    if error.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
        return True
    return error.get_http_status_code() >= 500


def _failure_reason(error: BaseException) -> str:
    """The short cause of a server failure: urllib3's 'Caused by ...' and the request's path when there are, else
    the first 200 characters."""
    import re

    text = " ".join(str(error).split())
    caused = re.search(r"Caused by \w+\((['\"])(.*?)\1\)", text)
    path = re.search(r"/api/[\w./-]+", text)
    if caused:
        return caused.group(2)[:200] + (f" from {path.group(0)}" if path else "")
    return text[:200].strip(" ()\"'.")


def _server_failed(uri: str, error: BaseException, run_id: str | None, closed: bool) -> TrackingServerError:
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    if run_id is None:
        run = "before the stage's run was opened"
    elif closed:
        run = f"during run {run_id}, which it then closed as FAILED"
    else:
        run = (f"during run {run_id}, which stays RUNNING there until the next attempt of this task on this host "
               "closes it as KILLED")
    return TrackingServerError(
        f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) failed {run} ({_failure_reason(error)}; "
        f"{retries} retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES); the stage stopped and DVC recorded nothing: restart "
        "the server and its database (a team server of scripts/team_server.py: `make team-server-stop && make "
        "team-server`) and run the stage again, or unset MLFLOW_TRACKING_URI to log to the local store mlflow.db")


def _account(username: str | None) -> str:
    return f"user {username!r}" if username else "no user (MLFLOW_TRACKING_USERNAME is not set)"


def check_tracking_server(uri: str, timeout: float = 10.0) -> None:
    """One authenticated read from the server at ``uri``, without retries; a clear error when it fails.

    Credentials are resolved the way MLflow's client resolves them (environment, then ~/.mlflow/credentials).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    credentials = get_default_host_creds(uri)
    try:
        response = http_request(credentials, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
                                timeout=timeout, raise_on_status=False, params={"max_results": 1})
    except MlflowException as error:
        reason = str(error).split("Caused by", 1)[-1].strip(" ()\"'")[:300]
        raise TrackingServerError(f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) cannot be reached "
                                  f"({reason}); {_START_OR_FIX}") from None
    if response.status_code == 401:
        raise TrackingServerError(
            f"the MLflow tracking server at {uri} refused the credentials of {_account(credentials.username)}: set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to an account that the "
            "team's admin created (scripts/team_server.py add-user)")
    if response.status_code != 200:
        raise TrackingServerError(f"the MLflow tracking server at {uri} answered HTTP {response.status_code} to a "
                                  f"read as {_account(credentials.username)}: {response.text[:300]}; {_START_OR_FIX}")


def _permission_denied(error: Exception, uri: str, experiment: str) -> TrackingServerError | None:
    """A clear error for a server that lets this account read but not write (None: some other failure)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds

    if not (isinstance(error, MlflowException) and error.error_code == "PERMISSION_DENIED"):
        return None
    username = get_default_host_creds(uri).username
    who = username or "NAME"
    return TrackingServerError(
        f"the MLflow tracking server at {uri} lets {_account(username)} read but not write to experiment "
        f"{experiment!r}: writing needs the writer role, EDIT on every pipeline experiment "
        f"({', '.join(EXPERIMENT_PREFIX + task for task in TEAM_TASKS)}); ask the team's admin to run "
        f"`python scripts/team_server.py grant {who} --permission EDIT` (an account made before the report "
        "experiment was shared lacks it; a new account: add-user --role writer), or log with a writer's credentials")


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
    """Create the store and one experiment per task, once, under a lock (safe to call from parallel stages), and
    give each experiment the project's description and "Cells" view (:mod:`.mlflow_views`) where they differ.

    The lock lives beside the SQLite file, so every process writing to the same database takes the same lock
    whatever its repository. For a server store the lock only serialises this machine; a creation race with
    another machine is caught and resolved by reading the experiment back.
    """
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    bound_server_retries(uri)
    if _is_server(uri):
        check_tracking_server(uri)
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
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = (database.parent / "mlartifacts" / name).as_uri() if database is not None else None
                try:
                    client.create_experiment(name, artifact_location=location)
                except MlflowException as error:
                    if (denied := _permission_denied(error, uri, name)) is not None:
                        raise denied from None
                    if client.get_experiment_by_name(name) is None:
                        raise
                experiment = client.get_experiment_by_name(name)
            if database is not None:
                _relocate_artifacts(database, experiment)
            for key, value in experiment_tags(task, experiment.tags).items():
                if experiment.tags.get(key) != value:
                    try:
                        client.set_experiment_tag(experiment.experiment_id, key, value)
                    except MlflowException as error:
                        if (denied := _permission_denied(error, uri, name)) is not None:
                            raise denied from None
                        raise


def _relocate_artifacts(database: Path, experiment) -> None:
    """Point a local store's experiment (and its runs) at ``mlartifacts/<name>`` beside ``database`` when it names
    that folder of another checkout: the store was copied or moved, and new runs would write their artifacts into
    the original. A location of another form (a user's own choice, an S3 URI) is left alone."""
    import sqlite3
    from urllib.parse import unquote, urlparse

    expected = (database.parent / "mlartifacts" / experiment.name).as_uri()
    current = experiment.artifact_location or ""
    if current == expected or not current.startswith("file://"):
        return
    if Path(unquote(urlparse(current).path)).parts[-2:] != ("mlartifacts", experiment.name):
        return
    with sqlite3.connect(database, timeout=60) as connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                           (expected, int(experiment.experiment_id)))
        # Runs copied or moved with the store: their artifacts came along under mlartifacts/ too.
        prefix = current.rstrip("/") + "/"
        connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                           "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                           (expected + "/", len(prefix) + 1, int(experiment.experiment_id), len(prefix), prefix))
    connection.close()


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
        import mlflow
        # MLflow caps a param value at 6000 chars.
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

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
        batch = [Metric(key, float(value), timestamp, step)
                 for key, value in _flatten(metrics).items() if _is_number(value)]
        for start in range(0, len(batch), 1000):  # MLflow's per-request cap on metrics
            self._client.log_batch(self.run_id, metrics=batch[start:start + 1000])

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
    server = _is_server(uri)
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
            _close_orphaned_runs(mlflow.MlflowClient(uri), experiment.experiment_id, task)
        except MlflowException as error:
            if (denied := _permission_denied(error, uri, experiment.name)) is not None:
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
            **_git_state(),
            **mlflow_tags(),
            **cell,
        }
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            try:
                run = mlflow.start_run(run_name=run_name or short_run_name(stage, task), tags=all_tags,
                                       log_system_metrics=system_metrics)
            except MlflowException as error:
                if (denied := _permission_denied(error, uri, experiment.name)) is not None:
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
                if not (server and _is_server_failure(error)):  # a failed server: closed once, below
                    mlflow.end_run(status="FAILED")
                raise
            else:
                mlflow.end_run(status="FINISHED")
        except _Interrupted:  # SIGTERM before the run was open: nothing to close, still exit as terminated
            raise SystemExit(128 + signal.SIGTERM) from None
    except BaseException as error:
        if not (server and _is_server_failure(error)):
            raise
        closed = run_id is not None and _close_after_failure(uri, run_id, "FAILED")
        raise _server_failed(uri, error, run_id, closed) from None
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
