"""Every MLflow convention of the project, in one place; :mod:`.store` is the store (URI, server checks,
experiments, clean-up), :mod:`.run` a stage's run (name, tags, params, logging).

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
  a description and a "Cells" view of its runs table (:mod:`equitune.pipeline.mlflow_views`); run name = the cell (the matrix
  item of the DVC stage, :func:`short_run_name`), the full stage name in the tag ``dvc.stage`` and in the run's
  description (``mlflow.note.content``, markdown, shown on the run page).
- Tags: task, the cell (model, method, group, seed, ...), profile, git dirty flag, dvc stage, dvc experiment,
  params hash, and the CUDA_VISIBLE_DEVICES / LOCAL_RANK the process ran with (which GPU a queue worker or rank
  used). The commit is MLflow's own tag ``mlflow.source.git.commit`` (set by ``mlflow.start_run`` from the stage
  script's checkout). Params: the cell again under short keys, then the stage's settings without the grid.
- Per-step values go to MLflow's metric history and, for a stage with a curve file, to that DVC plots file
  (:mod:`equitune.pipeline.curves`): one key per curve, its steps as MLflow steps. Final values are logged once, under the keys of
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

from .run import TrackedRun, dvc_md5, params_hash, run_description, settings_params, short_run_name, tracked_run
from .store import (
    EXPERIMENT_PREFIX,
    SERVER_RETRY_DEFAULTS,
    TASKS,
    TEAM_TASKS,
    TrackingServerError,
    check_tracking_server,
    ensure_store,
    repo_root,
    tracking_uri,
)

__all__ = ["TrackedRun", "TrackingServerError", "tracked_run", "tracking_uri", "ensure_store", "check_tracking_server",
           "params_hash", "repo_root", "dvc_md5", "settings_params", "EXPERIMENT_PREFIX", "TASKS",
           "SERVER_RETRY_DEFAULTS", "TEAM_TASKS", "short_run_name", "run_description"]
