"""The tracking store: where it is, that it answers, and its experiments.

The URI (``$MLFLOW_TRACKING_URI`` or ``mlflow.db`` at the repository root), the one-request check of a server,
MLflow's retries bounded to seconds for a server, the experiments created once under a file lock with the project's
description and "Cells" view (:mod:`equitune.pipeline.mlflow_views`), a copied store's artifact location pointed back beside it,
and the runs that a dead process left RUNNING closed as KILLED. The conventions are listed in
:mod:`equitune.pipeline.tracking`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from ...core.errors import ConfigError
from ..io import pid_alive
from ..mlflow_views import experiment_tags

__all__ = ["EXPERIMENT_PREFIX", "SERVER_RETRY_DEFAULTS", "TASKS", "TEAM_TASKS", "TrackingServerError",
           "bound_server_retries", "check_tracking_server", "close_orphaned_runs", "ensure_store", "is_server",
           "is_server_failure", "permission_denied", "repo_root", "server_failed", "tracking_uri"]

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


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_server_retries(uri: str) -> None:
    """For a server ``uri``, MLflow's retry settings from :data:`SERVER_RETRY_DEFAULTS` where the environment does
    not set them (MLflow reads them at every request)."""
    if is_server(uri):
        for name, value in SERVER_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)


def is_server_failure(error: BaseException) -> bool:
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


def failure_reason(error: BaseException) -> str:
    """The short cause of a server failure: urllib3's 'Caused by ...' and the request's path when there are, else
    the first 200 characters."""
    import re

    text = " ".join(str(error).split())
    caused = re.search(r"Caused by \w+\((['\"])(.*?)\1\)", text)
    path = re.search(r"/api/[\w./-]+", text)
    if caused:
        return caused.group(2)[:200] + (f" from {path.group(0)}" if path else "")
    return text[:200].strip(" ()\"'.")


def server_failed(uri: str, error: BaseException, run_id: str | None, closed: bool) -> TrackingServerError:
    """The one message of a stage whose server failed, before or during its run (``closed``: the run was then
    closed FAILED)."""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    if run_id is None:
        run = "before the stage's run was opened"
    elif closed:
        run = f"during run {run_id}, which it then closed as FAILED"
    else:
        run = (f"during run {run_id}, which stays RUNNING there until the next attempt of this task on this host "
               "closes it as KILLED")
    return TrackingServerError(
        f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) failed {run} ({failure_reason(error)}; "
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


def permission_denied(error: Exception, uri: str, experiment: str) -> TrackingServerError | None:
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


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def ensure_store(tasks: list[str] | tuple[str, ...] = TASKS) -> None:
    """Create the store and one experiment per task, once, under a lock (safe to call from parallel stages), and
    give each experiment the project's description and "Cells" view (:mod:`equitune.pipeline.mlflow_views`) where they differ.

    The lock lives beside the SQLite file, so every process writing to the same database takes the same lock
    whatever its repository. For a server store the lock only serialises this machine; a creation race with
    another machine is caught and resolved by reading the experiment back.
    """
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    bound_server_retries(uri)
    if is_server(uri):
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
                    if (denied := permission_denied(error, uri, name)) is not None:
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
                        if (denied := permission_denied(error, uri, name)) is not None:
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


def close_orphaned_runs(client, experiment_id: str, task: str) -> None:
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
