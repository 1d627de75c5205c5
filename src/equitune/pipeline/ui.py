"""``make ui``: the MLflow UI on this project's store, and a link to each experiment's runs table.

    python -m equitune.pipeline.ui [--host 127.0.0.1] [--port 5000]

Checks before starting anything: the store exists and holds runs (else: how to make them), and the port is free
(``mlflow ui`` itself only logs "address already in use" and keeps running). Then it brings the experiments'
descriptions and "Cells" views up to date (:mod:`.mlflow_views`), starts ``mlflow ui`` on 127.0.0.1, waits until it
answers, and prints one link per experiment: the runs table, in the UI's model-training mode, with the Cells view.
Ctrl-C (or SIGTERM) stops the server. With ``MLFLOW_TRACKING_URI`` pointing at a running server, it only prints the
links to that server.

The server runs without MLflow's job executor (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): those background
workers serve GenAI features (judges, issue detection) and double the start-up time.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import ConfigError, DataError, EquituneError
from .mlflow_views import runs_table_url
from .tracking import EXPERIMENT_PREFIX, ensure_store, tracking_uri

__all__ = ["experiment_links", "main"]

START_TIMEOUT_S = 180.0


def _store_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _experiments_with_runs(uri: str) -> list[tuple[str, str, int]]:
    """(name, id, number of runs) of the project's experiments in the store, by name."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = []
    for experiment in client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"):
        runs = len(client.search_runs([experiment.experiment_id], max_results=1000))
        found.append((experiment.name, experiment.experiment_id, runs))
    return sorted(found)


def check_store(uri: str) -> list[tuple[str, str, int]]:
    """The project's experiments that hold runs; a clear :class:`DataError` when there are none."""
    database = _store_path(uri)
    how = ("The pipeline writes it as it runs: `make repro` runs everything, `dvc repro <stage>` one stage (for "
           "example `dvc repro scan_prepare`); or point MLFLOW_TRACKING_URI at a team's MLflow server.")
    if database is not None and not database.is_file():
        raise DataError(f"no MLflow store at {database}. {how}")
    experiments = [entry for entry in _experiments_with_runs(uri) if entry[2] > 0]
    if not experiments:
        raise DataError(f"the MLflow store {uri} holds no runs of this project yet. {how} A stage that DVC restores "
                        "from its run-cache logs no run: `dvc repro --force <stage>` runs it again.")
    return experiments


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        # As uvicorn binds: a port held only by closed connections (TIME_WAIT) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use (another `make ui`, or another server). Stop it, or choose "
                    f"another port: `make ui PORT={port + 1}`.") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None


def experiment_links(base_url: str, experiments: Sequence[tuple[str, str, int]]) -> list[str]:
    width = max(len(name) for name, _, _ in experiments)
    return [f"  {name:<{width}}  {runs:>4} runs  {runs_table_url(base_url, experiment_id)}"
            for name, experiment_id, runs in experiments]


def serve(uri: str, host: str, port: int, experiments: Sequence[tuple[str, str, int]]) -> int:
    """Start ``mlflow ui``, print the links once it answers, and wait for it (Ctrl-C or SIGTERM stops it)."""
    from .services import ServiceError, executor, start, stop  # mirakuru loads only when a server starts
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    base_url = f"http://{host}:{port}"

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    with tempfile.TemporaryDirectory(prefix="equitune-ui-") as folder:
        log = Path(folder) / "mlflow-ui.log"
        server = executor(command, log=log, env=env, timeout=START_TIMEOUT_S, url=base_url + "/health")
        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            print(f"starting the MLflow UI on {base_url} (store {uri}) ...", flush=True)
            try:
                start(server, "mlflow ui", log)
            except ServiceError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            print("\nEach experiment's runs table (model-training mode, Views > Cells: the cell's tags and final "
                  "metrics as columns):", flush=True)
            print("\n".join(experiment_links(base_url, experiments)), flush=True)
            # A link's ?workflowType= holds for that page only; the runs table links its runs without it, and MLflow
            # 3.17 has no server setting for it: the sidebar switch, saved in the browser, is what keeps run pages in
            # the training layout.
            print(f"\nOr open {base_url}. Either way, click 'Model training' at the top of the sidebar once (this "
                  "browser remembers it): run pages then open in the training layout (Overview, Model metrics, "
                  "Artifacts), not the GenAI one. Ctrl-C stops the server.", flush=True)
            return server.process.wait()
        except KeyboardInterrupt:
            print("\nstopping the MLflow UI", flush=True)
            return 0
        finally:
            stop(server)  # the server and the workers it forked (one process group)
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    args = parser.parse_args(argv)
    uri = tracking_uri()
    try:
        experiments = check_store(uri)
        if uri.startswith(("http://", "https://")):
            print("MLFLOW_TRACKING_URI points at a server; its experiments' runs tables:")
            print("\n".join(experiment_links(uri, experiments)))
            return 0
        check_port_free(args.host, args.port)
        ensure_store(tuple(name[len(EXPERIMENT_PREFIX):] for name, _, _ in experiments))
    except EquituneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return serve(uri, args.host, args.port, experiments)


if __name__ == "__main__":
    sys.exit(main())
