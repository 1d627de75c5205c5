"""A team's tracking server (the recipe in deploy/team-server, run without Docker): PostgreSQL backend store, S3
artifact store (moto as the stand-in), MLflow's basic authentication, and the pipeline logging to it through
MLFLOW_TRACKING_URI alone.

The first test runs `scripts/team_server.py start` / `stop` end to end (what `make team-server` runs); the tests about
the server start it themselves from the recipe: PostgreSQL through pytest-postgresql's executor, S3 through moto's
ThreadedMotoServer, and the recipe's mlflow command and environment. Every server binds to 127.0.0.1 and is stopped
by the test that started it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from equitune.pipeline import tracking
from equitune.pipeline.services import alive, free_port, running
from helpers.paths import load_script
from helpers.servers import S3_CREDENTIALS, s3_server
from helpers.toy_project import (
    ASSETS,
    clean_env,
    make_toy_project,
    mlflow_runs,
    progress_lines,
    temp_files,
    wait_for,
    write_params,
)

REPO = Path(__file__).resolve().parents[2]
TEAM_SERVER = REPO / "scripts" / "team_server.py"


def load_team_server():
    return load_script(TEAM_SERVER)


def team_server(state: Path, *args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TEAM_SERVER), "--dir", str(state), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def toy_stage(root: Path, **env: str) -> subprocess.Popen:
    """The toy stage as DVC runs it, with a figure (its artifact) and a curve file."""
    return subprocess.Popen([sys.executable, str(ASSETS / "toy_stage.py"), "--figure", "figures/loss.png",
                             "--curve", "plots/toy/train.csv"], cwd=root,
                            env=clean_env(DVC_ROOT=str(root), DVC_STAGE="train", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def request(url: str, credentials: tuple[str, str] | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if credentials:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def no_outputs(root: Path) -> bool:
    return not any((root / name).exists() for name in ("metrics", "outputs", "figures", "plots")) and not temp_files(root)


@pytest.fixture
def state_dir():
    """A state folder the postgres user can traverse (pytest's tmp_path is private to root); removed after."""
    folder = Path(tempfile.mkdtemp(prefix="equitune-team-", dir="/tmp"))
    os.chmod(folder, 0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.longest(seconds=60)
@pytest.mark.slow
def test_team_server_serves_concurrent_stages_with_authentication(tmp_path, state_dir):
    admin = ("admin", secrets.token_urlsafe(16))
    writer, reader = ("writer", secrets.token_urlsafe(16)), ("reader", secrets.token_urlsafe(16))
    env = clean_env(MLFLOW_AUTH_ADMIN_USERNAME=admin[0], MLFLOW_AUTH_ADMIN_PASSWORD=admin[1])
    port = free_port()
    started = team_server(state_dir, "start", "--port", str(port), "--workers", "1", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = json.loads((state_dir / "state.json").read_text())
        url = state["url"]
        assert url == f"http://127.0.0.1:{port}"
        assert_runs_the_recipe(state["mlflow_pid"])
        experiments = ["--experiments", "equitune-toy", "equitune-scan", "equitune-images", "equitune-nlg"]
        adding = [subprocess.Popen([sys.executable, str(TEAM_SERVER), "--dir", str(state_dir), "add-user", name,
                                    "--role", role, *experiments], env={**env, "EQUITUNE_NEW_USER_PASSWORD": password},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for (name, password), role in ((writer, "writer"), (reader, "reader"))]
        outputs = [process.communicate(timeout=300)[0] for process in adding]
        assert [process.returncode for process in adding] == [0, 0], outputs
        assert "writer: EDIT on equitune-toy" in outputs[0], outputs[0]

        # Two stages at once, each in its own project, logging to the server with a writer's account.
        roots = [make_toy_project(tmp_path / f"p{seed}", seed=seed, epochs=2) for seed in (1, 2)]
        client = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": writer[0],
                  "MLFLOW_TRACKING_PASSWORD": writer[1]}
        stages = [toy_stage(root, **client) for root in roots]
        outcomes = [stage.communicate(timeout=240) for stage in stages]
        assert [stage.returncode for stage in stages] == [0, 0], outcomes

        import mlflow
        os.environ.update(client)  # the client reads its credentials from the environment, like a stage
        try:
            store = mlflow.MlflowClient(url)
            experiment = store.get_experiment_by_name("equitune-toy")
            runs = store.search_runs([experiment.experiment_id])
            assert sorted((r.data.tags["seed"], r.info.status) for r in runs) == [("1", "FINISHED"),
                                                                                  ("2", "FINISHED")]
            first, second = sorted(runs, key=lambda r: r.info.start_time)
            assert second.info.start_time < first.info.end_time, "the two stages did not overlap"
            for run in runs:
                root = roots[int(run.data.tags["seed"]) - 1]
                written = json.loads((root / "metrics" / "toy.json").read_text())
                assert run.data.metrics["loss"] == written["loss"]
                assert [m.step for m in store.get_metric_history(run.info.run_id, "lr")] == [0, 1]
                assert [a.path for a in store.list_artifacts(run.info.run_id, "figures")] == ["figures/loss.png"]
                fetched = store.download_artifacts(run.info.run_id, "figures/loss.png", str(tmp_path / run.info.run_id))
                assert Path(fetched).read_bytes() == (root / "figures" / "loss.png").read_bytes()
        finally:
            for name in client:
                os.environ.pop(name, None)

        # The runs are in PostgreSQL and the artifacts in the S3 store, not in any local file.
        assert run_count_in_postgres(state_dir, state["postgres_port"]) == 2
        keys = s3_keys(state["s3_port"])
        assert sum(key.endswith("/artifacts/figures/loss.png") for key in keys) == 2, keys
        assert all(mlflow_runs(root / "mlflow.db") == [] for root in roots)  # nothing went to the local stores
        assert not any((root / "mlartifacts").exists() for root in roots)

        # Authentication: no credentials -> 401; a reader reads but cannot write.
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert request(search) == 401
        assert request(search, ("writer", "wrong-password-123")) == 401
        assert request(search, reader) == 200
        assert request(f"{url}/api/2.0/mlflow/runs/create", reader, {"experiment_id": experiment.experiment_id}) == 403
        # The pipeline's own check and run opening say what is wrong, before any work (in process: the same code
        # the stage runs, without paying a stage's start-up three more times).
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", url)
            patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            patch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            patch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
            patch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
            with pytest.raises(tracking.TrackingServerError, match="refused the credentials of no user"):
                tracking.ensure_store(("toy",))
            patch.setenv("MLFLOW_TRACKING_USERNAME", reader[0])
            patch.setenv("MLFLOW_TRACKING_PASSWORD", reader[1])
            with pytest.raises(tracking.TrackingServerError,
                               match="lets user 'reader' read but not write to experiment 'equitune-toy'"):
                with tracking.tracked_run("toy", profile="default", params={"seed": 3}):
                    raise AssertionError("a reader's run must not open")
    finally:
        stopped = team_server(state_dir, "stop", env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    for name in ("mlflow_pid", "moto_pid"):
        assert not alive(state.get(name)), f"{name} still running after stop"
    assert (state_dir / "postgres" / "data" / "PG_VERSION").exists(), "no PostgreSQL cluster in the state folder"
    assert not (state_dir / "postgres" / "data" / "postmaster.pid").exists(), "PostgreSQL still running after stop"
    methods = {line.split()[-1] for line in (state_dir / "postgres" / "data" / "pg_hba.conf").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")}
    assert methods == {"scram-sha-256"}, f"every connection needs the hashed password challenge, got {methods}"


def assert_runs_the_recipe(pid: int) -> None:
    """The server `start` left running is the recipe's: the mlflow service's command, every variable of its
    environment set (the values are this machine's), and the accounts' settings read from the recipe's ini."""
    import psutil
    import yaml
    service = yaml.safe_load((REPO / "deploy" / "team-server" / "docker-compose.yml").read_text())["services"]["mlflow"]
    process = psutil.Process(pid)
    assert process.cmdline()[-len(service["command"]) + 1:] == service["command"][1:], process.cmdline()
    assert Path(process.cmdline()[-len(service["command"])]).name == "mlflow", process.cmdline()
    environment = process.environ()
    unset = set(service["environment"]) - set(environment) - {"MLFLOW_SERVER_ALLOWED_HOSTS"}  # empty: MLflow's default
    assert not unset, f"the recipe sets {sorted(unset)}, the no-Docker server does not"
    assert "default_permission = READ" in Path(environment["MLFLOW_AUTH_CONFIG_PATH"]).read_text()


def run_count_in_postgres(state_dir: Path, port: int) -> int:
    import psycopg2
    password = json.loads((state_dir / "secrets.json").read_text())["postgres_password"]
    connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", password=password, dbname="mlflow")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                           "WHERE e.name = 'equitune-toy'")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def s3_keys(port: int) -> list[str]:
    import boto3
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="moto", aws_secret_access_key="moto")
    return [item["Key"] for item in client.list_objects_v2(Bucket="equitune-mlflow").get("Contents", [])]


@pytest.mark.slow
def test_an_unreachable_server_stops_the_stage_before_any_work(tmp_path):
    root = make_toy_project(tmp_path / "toy", seed=0, epochs=1)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stage = toy_stage(root, MLFLOW_TRACKING_URI=url)
    _, stderr = stage.communicate(timeout=120)
    assert stage.returncode == 2, stderr
    assert f"the MLflow tracking server at {url} (MLFLOW_TRACKING_URI) cannot be reached" in stderr, stderr
    assert "make team-server" in stderr and "unset MLFLOW_TRACKING_URI" in stderr
    assert stderr.count("\n") <= 3, stderr  # one message, no traceback
    assert no_outputs(root)


def test_check_names_the_variable_for_a_closed_port(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(tracking.TrackingServerError, match="cannot be reached"):
        tracking.check_tracking_server(url, timeout=5)


def test_admin_credentials_come_from_outside_the_repository(tmp_path, monkeypatch):
    module = load_team_server()
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("EQUITUNE_TEAM_CREDENTIALS", raising=False)
    args = type("Args", (), {"admin_credentials": None})()
    with pytest.raises(module.TeamServerError, match="no admin credentials"):
        module.admin_credentials(args)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    with pytest.raises(module.TeamServerError, match="shorter than 12"):
        module.admin_credentials(args)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD")
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME")
    outside = tmp_path / "admin.ini"
    outside.write_text("[admin]\nusername = boss\npassword = a-long-enough-password\n")
    outside.chmod(0o644)
    args.admin_credentials = str(outside)
    with pytest.raises(module.TeamServerError, match="readable by others: chmod 600"):
        module.admin_credentials(args)
    outside.chmod(0o600)
    assert module.admin_credentials(args) == ("boss", "a-long-enough-password")
    args.admin_credentials = str(REPO / "README.md")
    with pytest.raises(module.TeamServerError, match="inside the repository"):
        module.admin_credentials(args)


@contextlib.contextmanager
def recipe_server(state_dir: Path) -> Iterator[tuple[str, tuple[str, str], dict[str, str], object]]:
    """The recipe's server (deploy/team-server) on this machine, with a fresh admin: PostgreSQL from
    pytest-postgresql's executor (run as the postgres user under root, as `team_server.py start` runs it), moto's
    ThreadedMotoServer for S3, and `mlflow server` with the recipe's command, environment and basic_auth.ini. Yields
    its URL, the admin's credentials, the environment for the script's account commands, and the PostgreSQL executor;
    every service is stopped at the end, which must succeed."""
    module = load_team_server()
    admin = ("admin", secrets.token_urlsafe(16))
    env = clean_env(MLFLOW_AUTH_ADMIN_USERNAME=admin[0], MLFLOW_AUTH_ADMIN_PASSWORD=admin[1])
    (state_dir / "logs").mkdir()
    postgres = module.postgres_executor(state_dir, free_port(), secrets.token_urlsafe(24))
    backend = module.start_postgres(postgres)
    try:
        with s3_server("equitune-mlflow") as endpoint:
            port = free_port()
            values = module.server_values(
                state_dir, backend=backend, destination="s3://equitune-mlflow/artifacts",
                s3={"MLFLOW_S3_ENDPOINT_URL": endpoint, **S3_CREDENTIALS}, admin=admin,
                secret_key=secrets.token_urlsafe(32), host="127.0.0.1", port=port, workers=1, allowed_hosts=None,
                auth_cache_seconds=60)
            log = state_dir / "logs" / "mlflow.log"
            with running(module.mlflow_executor(state_dir, values, timeout=300), "mlflow server", log) as server:
                pid = server.process.pid
                yield f"http://127.0.0.1:{port}", admin, env, postgres
            assert not alive(pid), "mlflow server still running"
    finally:
        if postgres.running():
            postgres.stop()
    assert not postgres.running(), "PostgreSQL still running"


@pytest.mark.longest(seconds=60)
@pytest.mark.slow
def test_a_database_outage_mid_run_fails_the_stage_in_seconds(tmp_path, state_dir):
    """The team server's PostgreSQL stops while a stage logs to it: the stage ends within seconds with exit 2 and
    one message (no traceback), leaves no metrics file and no half-written file, and once PostgreSQL is back the
    run is not left RUNNING and the stage runs again."""
    import time

    import mlflow
    with recipe_server(state_dir) as (url, admin, _, postgres):
        client = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": admin[0],
                  "MLFLOW_TRACKING_PASSWORD": admin[1]}
        root = make_toy_project(tmp_path / "toy", seed=0, epochs=400, epoch_seconds=0.25)
        progress = tmp_path / "progress.txt"
        stage = toy_stage(root, TOY_PROGRESS=str(progress), **client)
        try:
            wait_for(lambda: "epoch 1" in progress_lines(progress), timeout=240, what="the stage to log epochs")
            postgres.stop()
            assert not postgres.running(), "PostgreSQL did not stop"
            stopped_at = time.monotonic()
            _, stderr = stage.communicate(timeout=300)
            seconds = time.monotonic() - stopped_at
        finally:
            if stage.poll() is None:
                stage.kill()
                stage.wait()
        print(f"\ntime from PostgreSQL stopped to the stage's exit: {seconds:.1f} s; stderr:\n{stderr}")
        (tmp_path / "time_to_error.txt").write_text(f"{seconds:.1f}\n")
        assert stage.returncode == 2, stderr
        assert stderr.startswith(f"error: the MLflow tracking server at {url} (MLFLOW_TRACKING_URI) failed during run "
                                 ), stderr
        assert "make team-server" in stderr and "unset MLFLOW_TRACKING_URI" in stderr, stderr
        assert "Traceback" not in stderr and stderr.count("\n") <= 2, stderr  # one message
        assert seconds < 60, f"the stage took {seconds:.0f} s to give up"
        assert not (root / "metrics").exists() and not temp_files(root)  # the metrics file is written last

        postgres.start()
        os.environ.update(client)
        try:
            store = mlflow.MlflowClient(url)
            experiment = store.get_experiment_by_name("equitune-toy")
            [failed] = store.search_runs([experiment.experiment_id])
            assert failed.info.status in ("RUNNING", "FAILED"), failed.info.status
            print(f"the failed run after PostgreSQL came back: {failed.info.status}")
            write_params(root, seed=0, epochs=2)
            rerun = toy_stage(root, **client)
            out, err = rerun.communicate(timeout=240)
            assert rerun.returncode == 0, err
            runs = {run.info.run_id: run.info.status for run in store.search_runs([experiment.experiment_id])}
            assert runs.pop(failed.info.run_id) in ("FAILED", "KILLED")  # closed by the rerun when left RUNNING
            assert list(runs.values()) == ["FINISHED"]
        finally:
            for name in client:
                os.environ.pop(name, None)
        assert json.loads((root / "metrics" / "toy.json").read_text())["epochs"] == 2


@pytest.mark.longest(seconds=70)
@pytest.mark.slow
def test_every_writer_can_run_every_stage_the_report_included(tmp_path, state_dir, monkeypatch):
    """Two writers made with the defaults both log to every pipeline experiment, equitune-report included (shared
    experiments, created by the admin); a reader is refused with the role and the command that grants it."""
    import mlflow
    with recipe_server(state_dir) as (url, _, env, _postgres):
        try:
            accounts = {name: secrets.token_urlsafe(16) for name in ("ann", "ben", "reader")}
            for name, password in accounts.items():
                role = "reader" if name == "reader" else "writer"
                added = team_server(state_dir, "add-user", name, "--role", role, "--url", url,
                                    env={**env, "EQUITUNE_NEW_USER_PASSWORD": password}, timeout=300)
                assert added.returncode == 0, added.stdout + added.stderr
                if role == "writer":
                    assert f"{name}: EDIT on equitune-report" in added.stdout, added.stdout
            monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
            monkeypatch.delenv("DVC_STAGE", raising=False)
            monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
            for name, value in tracking.SERVER_RETRY_DEFAULTS.items():
                monkeypatch.setenv(name, value)
            for writer in ("ann", "ben"):
                monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", writer)
                monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", accounts[writer])
                for task in tracking.TEAM_TASKS:
                    with tracking.tracked_run(task, profile="default", params={"seed": 0}, run_name=f"{writer}-{task}",
                                              system_metrics=False) as run:
                        run.log_metrics({"loss": 1.0})
            store = mlflow.MlflowClient(url)
            for task in tracking.TEAM_TASKS:
                experiment = store.get_experiment_by_name(f"equitune-{task}")
                runs = store.search_runs([experiment.experiment_id])
                assert sorted((r.info.run_name, r.info.status) for r in runs) == [
                    (f"ann-{task}", "FINISHED"), (f"ben-{task}", "FINISHED")]
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", accounts["reader"])
            with pytest.raises(tracking.TrackingServerError) as refused:
                with tracking.tracked_run("report", profile="default", params={}, system_metrics=False):
                    raise AssertionError("a reader's run must not open")
            message = str(refused.value)
            assert "lets user 'reader' read but not write to experiment 'equitune-report'" in message, message
            assert "writer role" in message and "`python scripts/team_server.py grant reader --permission EDIT`" in message
        finally:
            mlflow.set_tracking_uri(None)
