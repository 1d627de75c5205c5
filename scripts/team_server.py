#!/usr/bin/env python
"""A team's MLflow tracking server: PostgreSQL backend store, S3 artifact store, MLflow's built-in authentication.

The server is the recipe in deploy/team-server/ (MLflow's docker-compose layout; its README.md). This script manages
its accounts, and runs the same recipe where Docker is not (CI, a trial):

    python scripts/team_server.py start            # PostgreSQL + S3 stand-in + mlflow server, on 127.0.0.1
    python scripts/team_server.py add-user NAME --role writer|reader
    python scripts/team_server.py grant NAME --permission EDIT
    python scripts/team_server.py status
    python scripts/team_server.py stop

Credentials never live in the repository or in params:
- the admin account comes from MLflow's own variables MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, or
  from ``--admin-credentials FILE`` (an ini file with ``[admin]`` ``username`` and ``password``; it must be outside
  the repository and readable by its owner only); MLflow wants a password of at least 12 characters;
- a new user's password comes from EQUITUNE_NEW_USER_PASSWORD, or is asked for on the terminal;
- the server's internal secrets (the PostgreSQL password, Flask's secret key) are generated: by this script once
  into the state folder (``--dir``, default ``~/.local/share/equitune-team``, ``/var/lib/equitune-team`` for root),
  mode 0600; into the recipe's git-ignored .env by whoever runs compose.

``start`` runs the recipe's mlflow service (its ``command``, every variable its ``environment`` names, here with
local values, and its basic_auth.ini filled from them) on a PostgreSQL cluster in ``<dir>/postgres``
(pytest-postgresql's executor) and a ``moto`` S3 server in place of MinIO (in memory: artifacts are gone when it
stops), bound to 127.0.0.1 unless ``--host`` says otherwise (then give ``--allowed-hosts`` too, and put TLS in front
of it: basic auth sends passwords in every request). ``add-user --role writer`` (and ``grant NAME``) gives EDIT on
every experiment a pipeline stage logs to, created by the admin when missing so that all writers share them; the
default permission is READ.
"""

from __future__ import annotations

import argparse
import configparser
import getpass
import glob
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pytest_postgresql.executors import PostgreSQLExecutor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # the repository's equitune, installed or not
from equitune.pipeline.services import (  # noqa: E402
    LOOPBACK,
    ServiceError,
    alive,
    detach,
    executor,
    free_port,
    port_is_used,
    start,
    stop_pid,
)

BIN = Path(sys.executable).parent
RECIPE = REPO / "deploy" / "team-server"
DEFAULT_DIR = Path("/var/lib/equitune-team") if os.geteuid() == 0 else Path.home() / ".local/share/equitune-team"
LOCAL_S3_BUCKET = "equitune-mlflow"
MIN_PASSWORD = 12  # MLflow refuses shorter admin passwords


class TeamServerError(Exception):
    """A problem the user can fix; printed as one message, exit 1."""


# ----- small helpers -----

def inside_repository(path: Path) -> bool:
    path = path.resolve()
    return path == REPO or REPO in path.parents


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)


def read_state(folder: Path) -> dict:
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(folder: Path, state: dict) -> None:
    write_private(folder / "state.json", json.dumps(state, indent=2) + "\n")


# ----- credentials -----

def admin_credentials(args) -> tuple[str, str]:
    """The admin account: MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, else the --admin-credentials file."""
    username = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "")
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    source = "MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD"
    file = args.admin_credentials or os.environ.get("EQUITUNE_TEAM_CREDENTIALS")
    if not (username and password) and file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise TeamServerError(f"admin credentials file {path} does not exist")
        if inside_repository(path):
            raise TeamServerError(f"admin credentials file {path} is inside the repository: move it out (e.g. to "
                                  "~/.config/equitune/team-admin.ini); credentials must never be committed")
        if path.stat().st_mode & 0o077:
            raise TeamServerError(f"admin credentials file {path} is readable by others: chmod 600 {path}")
        parser = configparser.ConfigParser()
        parser.read(path)
        if "admin" not in parser:
            raise TeamServerError(f"{path}: expected an [admin] section with username and password")
        username, password = parser["admin"].get("username", ""), parser["admin"].get("password", "")
        source = str(path)
    if not (username and password):
        raise TeamServerError("no admin credentials: set MLFLOW_AUTH_ADMIN_USERNAME and MLFLOW_AUTH_ADMIN_PASSWORD, "
                              "or pass --admin-credentials FILE (an [admin] section with username and password, "
                              "outside the repository, chmod 600)")
    if len(password) < MIN_PASSWORD:
        raise TeamServerError(f"the admin password from {source} is shorter than {MIN_PASSWORD} characters, "
                              "which MLflow refuses")
    return username, password


def internal_secrets(folder: Path) -> dict:
    """The PostgreSQL password and Flask's secret key: generated once, kept in the state folder (0600)."""
    path = folder / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {"postgres_password": secrets.token_urlsafe(24), "flask_secret_key": secrets.token_urlsafe(32)}
    write_private(path, json.dumps(values) + "\n")
    return values


# ----- the recipe: deploy/team-server -----

def recipe_service() -> dict:
    """The mlflow service of the recipe's docker-compose.yml (its command, the names of its environment)."""
    import yaml
    return yaml.safe_load((RECIPE / "docker-compose.yml").read_text())["services"]["mlflow"]


def auth_config(env: dict[str, str]) -> str:
    """The recipe's basic_auth.ini with its ${NAME}s filled from ``env``, as the container's entrypoint fills it."""
    return string.Template((RECIPE / "basic_auth.ini").read_text()).substitute(env)


def server_values(folder: Path, *, backend: str, destination: str, s3: dict[str, str],
                  admin: tuple[str, str], secret_key: str, host: str, port: int, workers: int,
                  allowed_hosts: str | None, auth_cache_seconds: int) -> dict[str, str | None]:
    """A value for each variable of the recipe's mlflow service (None: MLflow's default); the accounts live in the
    tracking store's database, as in the recipe."""
    return {"MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_AUTH_DATABASE_URI": backend,
            "MLFLOW_ARTIFACTS_DESTINATION": destination, **s3,
            "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
            "MLFLOW_AUTH_CACHE_SECONDS": str(auth_cache_seconds), "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
            "MLFLOW_HOST": host, "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": str(workers),
            "MLFLOW_SERVER_ALLOWED_HOSTS": allowed_hosts, "MLFLOW_DISABLE_TELEMETRY": "true"}


def server_url(host: str, port: int | str) -> str:
    return f"http://{LOOPBACK if host in ('0.0.0.0', '::') else host}:{port}"


def mlflow_executor(folder: Path, values: dict[str, str | None], timeout: float):
    """`mlflow server` as the recipe runs it: the mlflow service's command, with every variable its environment
    names set from ``values``, and its basic_auth.ini filled from them (mode 0600: it holds the database password)."""
    service = recipe_service()
    missing = sorted(set(service["environment"]) - set(values))
    if missing:
        raise TeamServerError(f"the recipe's mlflow service (deploy/team-server/docker-compose.yml) sets "
                              f"{', '.join(missing)}, which scripts/team_server.py does not: give them a value here")
    env = {name: value for name, value in values.items() if value is not None}
    write_private(Path(env["MLFLOW_AUTH_CONFIG_PATH"]), auth_config({**os.environ, **env}))
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # the server's own subprocesses find this venv
    command = service["command"]
    return executor([str(BIN / command[0]), *command[1:]], log=folder / "logs" / "mlflow.log", env=env,
                    timeout=timeout, url=server_url(env["MLFLOW_HOST"], env["MLFLOW_PORT"]) + "/health")


# ----- PostgreSQL: pytest-postgresql's executor, for a cluster that outlives the command -----

PG_CTL_AS_POSTGRES = """#!/bin/sh
# Debian's pg_ctl as the postgres user: initdb and postgres refuse to run as root. initdb's password file, written
# by pytest-postgresql's executor as root (mode 0600), is handed to the postgres user first.
for word in $*; do case "$word" in --pwfile=*) chown postgres "${{word#--pwfile=}}";; esac; done
exec runuser -u postgres -- {pg_ctl} "$@"
"""


class TeamPostgres(PostgreSQLExecutor):
    """pytest-postgresql's executor (pg_ctl started and waited for by mirakuru), keeping its cluster: initdb runs
    once, and the data folder stays when the server stops (the executor removes it: it is made for test databases)."""

    def init_directory(self) -> None:
        if (Path(self.datadir) / "PG_VERSION").exists():
            return
        super().init_directory()
        # The executor's initdb asks for cleartext "password" authentication; the team's cluster keeps the hashed
        # challenge (scram-sha-256, which matches PostgreSQL's default password_encryption): same lines, stronger method.
        hba = Path(self.datadir) / "pg_hba.conf"
        hba.write_text(re.sub(r"\bpassword$", "scram-sha-256", hba.read_text(), flags=re.MULTILINE))

    def clean_directory(self) -> None:
        pass


def pg_ctl() -> str:
    found = shutil.which("pg_ctl") or max(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), default=None,
                                          key=lambda path: int(path.split("/")[4]))
    if not found:
        raise TeamServerError("PostgreSQL's pg_ctl was not found: install the server (apt-get install postgresql; "
                              "scripts/setup.sh does it), or run the recipe with Docker (deploy/team-server)")
    return found


def postgres_executor(folder: Path, port: int, password: str | None = None) -> TeamPostgres:
    """The cluster in ``<folder>/postgres`` (data, log, socket) on 127.0.0.1:``port``, user ``mlflow``."""
    home, executable = folder / "postgres", pg_ctl()
    home.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        import pwd
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise TeamServerError("running as root but there is no 'postgres' user to run PostgreSQL as: install "
                                  "Debian's postgresql package, or run this as an ordinary user") from None
        os.chown(home, owner.pw_uid, owner.pw_gid)
        wrapper = folder / "pg_ctl"
        wrapper.write_text(PG_CTL_AS_POSTGRES.format(pg_ctl=executable))
        wrapper.chmod(0o755)
        executable = str(wrapper)
    # fsync stays on (the executor turns it off, which a test database can afford and the team's cannot).
    return TeamPostgres(executable=executable, host=LOOPBACK, port=port, datadir=str(home / "data"),
                        unixsocketdir=str(home), logfile=str(home / "server.log"), startparams="-w -t 120",
                        dbname="mlflow", user="mlflow", password=password, timeout=120,
                        postgres_options=f"-c listen_addresses={LOOPBACK} -c fsync=on")


def start_postgres(postgres: TeamPostgres) -> str:
    """Start the cluster (initdb the first time), create the ``mlflow`` database when missing; its URI."""
    import psycopg
    from pytest_postgresql.janitor import DatabaseJanitor
    try:
        start(postgres, "PostgreSQL", Path(postgres.logfile))
    except subprocess.CalledProcessError as error:
        raise TeamServerError(f"initdb failed (exit {error.returncode}); the postgres user must be able to reach "
                              f"{postgres.datadir} (its parent folders need o+x), or choose another --dir") from None
    try:
        DatabaseJanitor(user=postgres.user, host=postgres.host, port=postgres.port, dbname=postgres.dbname,
                        password=postgres.password).init()
    except psycopg.errors.DuplicateDatabase:
        pass  # a cluster started before
    return (f"postgresql+psycopg2://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/"
            f"{postgres.dbname}")


def stop_postgres(folder: Path, port: int | None) -> None:
    if port and (folder / "postgres" / "data" / "PG_VERSION").exists():
        postgres = postgres_executor(folder, port)
        if postgres.running():
            postgres.stop()


# ----- the S3 stand-in -----

def start_local_s3(folder: Path, port: int) -> tuple[int, dict[str, str]]:
    """moto's S3 server on 127.0.0.1:``port`` with the bucket; its pid and the variables that point MLflow at it."""
    import boto3
    pid = detach(start(executor([str(BIN / "moto_server"), "-H", LOOPBACK, "-p", str(port)],
                                log=folder / "logs" / "moto.log", env={}, timeout=120, port=port),
                       "the moto S3 server", folder / "logs" / "moto.log"))
    s3 = {"MLFLOW_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{port}", "AWS_ACCESS_KEY_ID": "moto",
          "AWS_SECRET_ACCESS_KEY": "moto", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=s3["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="moto", aws_secret_access_key="moto").create_bucket(Bucket=LOCAL_S3_BUCKET)
    return pid, s3


# ----- accounts and permissions, through MLflow's own clients, as the admin -----

def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def admin_clients(base: str, admin: tuple[str, str]):
    """MLflow's tracking client and its auth client, authenticated as the admin (credentials in this process's
    environment only, the way MLflow's clients read them)."""
    import mlflow
    from mlflow.server import get_app_client
    os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1],
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    if not http_ok(base + "/health"):
        raise TeamServerError(f"the tracking server at {base} cannot be reached; is it running? "
                              "(python scripts/team_server.py status)")
    return mlflow.MlflowClient(base), get_app_client("basic-auth", tracking_uri=base)


def started_url(args) -> str:
    if args.url:
        return args.url.rstrip("/")
    state = read_state(Path(args.dir).expanduser())
    if not state.get("url"):
        raise TeamServerError(f"no server started from {args.dir}: pass --url, or start one")
    return state["url"]


def team_experiments(names: list[str] | None) -> list[str]:
    if names:
        return names
    from equitune.pipeline.tracking import EXPERIMENT_PREFIX, TEAM_TASKS
    return [EXPERIMENT_PREFIX + task for task in TEAM_TASKS]


def grant(base: str, admin: tuple[str, str], username: str, permission: str, experiments: list[str]) -> None:
    """``permission`` for ``username`` on each experiment (created by the admin when it does not exist yet)."""
    tracking, auth = admin_clients(base, admin)
    for name in experiments:
        experiment = tracking.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else tracking.create_experiment(name)
        auth.grant_user_permission(username, "experiment", experiment_id, permission)
        print(f"[team-server] {username}: {permission} on {name}")


# ----- commands -----

def check_start(args, folder: Path) -> None:
    if inside_repository(folder):
        raise TeamServerError(f"--dir {folder} is inside the repository: the state folder holds secrets and "
                              "databases; choose one outside it")
    state = read_state(folder)
    if alive(state.get("mlflow_pid")):
        raise TeamServerError(f"a team server from {folder} is already running at {state['url']} "
                              f"(pid {state['mlflow_pid']}); stop it first")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allowed_hosts:
        raise TeamServerError(f"--host {args.host} exposes the server beyond this machine: also pass --allowed-hosts "
                              "(the host names clients use), and put TLS in front of it")
    if port_is_used(args.port):
        raise TeamServerError(f"port {args.port} is already in use: choose another --port")


def command_start(args) -> None:
    folder = Path(args.dir).expanduser().resolve()
    check_start(args, folder)
    admin = admin_credentials(args)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o711)  # the postgres user must traverse it; nothing in it is readable by others
    (folder / "logs").mkdir(exist_ok=True)
    internal = internal_secrets(folder)
    state = {"dir": str(folder)}
    write_state(folder, state)
    # The services get this process's environment plus their own (mirakuru's way): a client's MLFLOW_TRACKING_* (a
    # user's credentials, a URI) must not reach the server, so they leave this process first; `start` opens no client.
    for name in [name for name in os.environ if name.startswith("MLFLOW_TRACKING_")]:
        del os.environ[name]
    try:
        state["postgres_port"], state["s3_port"] = free_port(), free_port()
        write_state(folder, state)
        postgres = postgres_executor(folder, state["postgres_port"], internal["postgres_password"])
        backend = start_postgres(postgres)
        detach(postgres)  # it outlives this command; `stop` ends it
        state["moto_pid"], s3 = start_local_s3(folder, state["s3_port"])
        write_state(folder, state)
        values = server_values(folder, backend=backend, destination=f"s3://{LOCAL_S3_BUCKET}/artifacts",
                               s3=s3, admin=admin, secret_key=internal["flask_secret_key"], host=args.host,
                               port=args.port, workers=args.workers, allowed_hosts=args.allowed_hosts,
                               auth_cache_seconds=args.auth_cache_seconds)
        state["url"] = server_url(args.host, args.port)
        state["mlflow_pid"] = detach(start(mlflow_executor(folder, values, args.timeout), "mlflow server",
                                           folder / "logs" / "mlflow.log"))
        write_state(folder, state)
    except BaseException:
        stop(folder)
        raise
    print(f"[team-server] MLflow at {state['url']} (PostgreSQL, moto S3); state in {folder}")
    print("[team-server] clients: export MLFLOW_TRACKING_URI=" + state["url"] +
          " and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials);"
          " add accounts with: python scripts/team_server.py add-user NAME --role writer|reader")


def stop(folder: Path) -> None:
    state = read_state(folder)
    stop_pid(state.get("mlflow_pid"))
    stop_pid(state.get("moto_pid"))
    stop_postgres(folder, state.get("postgres_port"))
    if state:
        write_state(folder, {"dir": state.get("dir", str(folder))})


def command_stop(args) -> None:
    folder = Path(args.dir).expanduser().resolve()
    stop(folder)
    print(f"[team-server] stopped (state kept in {folder})")


def command_status(args) -> None:
    folder = Path(args.dir).expanduser().resolve()
    state = read_state(folder)
    running = alive(state.get("mlflow_pid")) and http_ok(state.get("url", "") + "/health")
    print(json.dumps({**state, "running": running}, indent=2))
    if not running:
        raise SystemExit(3)


def command_add_user(args) -> None:
    base, admin = started_url(args), admin_credentials(args)
    password = os.environ.get("EQUITUNE_NEW_USER_PASSWORD") or getpass.getpass(f"password for {args.username}: ")
    if len(password) < MIN_PASSWORD:
        raise TeamServerError(f"the password for {args.username} is shorter than {MIN_PASSWORD} characters")
    from mlflow.exceptions import MlflowException
    _, auth = admin_clients(base, admin)
    try:
        auth.create_user(args.username, password)
    except MlflowException as error:
        raise TeamServerError(f"could not create {args.username!r}: {error.message}") from None
    print(f"[team-server] created {args.role} {args.username!r}")
    if args.role == "writer":
        grant(base, admin, args.username, "EDIT", team_experiments(args.experiments))


def command_grant(args) -> None:
    grant(started_url(args), admin_credentials(args), args.username, args.permission,
          team_experiments(args.experiments))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=os.environ.get("EQUITUNE_TEAM_DIR", str(DEFAULT_DIR)),
                        help=f"state folder, outside the repository (default {DEFAULT_DIR}, or $EQUITUNE_TEAM_DIR)")
    parser.add_argument("--admin-credentials", help="ini file with [admin] username, password (else the "
                        "MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD variables)")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="run deploy/team-server without Docker: PostgreSQL, a moto S3 "
                                "stand-in, mlflow server")
    start.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    start.add_argument("--port", type=int, default=5000)
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--allowed-hosts", help="Host headers to accept when binding beyond 127.0.0.1")
    start.add_argument("--auth-cache-seconds", type=int, default=60,
                       help="how long a verified password is cached per worker (0: hash every request)")
    start.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server (default 300)")
    start.set_defaults(func=command_start)

    commands.add_parser("stop", help="stop every process started by `start`").set_defaults(func=command_stop)
    commands.add_parser("status", help="what runs, where (exit 3 when not running)").set_defaults(func=command_status)

    add_user = commands.add_parser("add-user", help="create an account (password: $EQUITUNE_NEW_USER_PASSWORD)")
    add_user.add_argument("username")
    add_user.add_argument("--role", choices=("reader", "writer"), required=True,
                          help="reader: read only (the server's default permission); writer: EDIT on the team's "
                               "experiments")
    add_user.add_argument("--experiments", nargs="+", help="experiments a writer may edit (default: every pipeline "
                          "experiment, equitune-scan, -images, -nlg, -report)")
    add_user.add_argument("--url", help="server URL (default: the one started from --dir)")
    add_user.set_defaults(func=command_add_user)

    grant_parser = commands.add_parser("grant", help="give an account a permission on the team's experiments")
    grant_parser.add_argument("username")
    grant_parser.add_argument("--permission", choices=("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"),
                              default="EDIT")
    grant_parser.add_argument("--experiments", nargs="+", help="default: every pipeline experiment, equitune-scan, "
                              "-images, -nlg, -report")
    grant_parser.add_argument("--url", help="server URL (default: the one started from --dir)")
    grant_parser.set_defaults(func=command_grant)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (TeamServerError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as error:
        if type(error).__name__ != "MlflowException":
            raise
        print(f"error: the tracking server refused: {error.message}", file=sys.stderr)  # a 4xx, explained
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
