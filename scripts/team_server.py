#!/usr/bin/env python
"""A team's MLflow tracking server: PostgreSQL backend store, S3 artifact store, MLflow's built-in authentication.

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
- the server's internal secrets (the PostgreSQL password, Flask's secret key) are generated once into the state
  folder (``--dir``, default ``~/.local/share/equitune-team``, ``/var/lib/equitune-team`` for root), mode 0600.
Clients (the pipeline) need no code change: MLFLOW_TRACKING_URI plus MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD (or ``~/.mlflow/credentials``). Artifacts go through the server (``--serve-artifacts``),
so only the server holds the S3 credentials.

What runs where:
- backend store: a PostgreSQL cluster created in ``<dir>/postgres`` (initdb/pg_ctl from Debian's postgresql
  package, run as the ``postgres`` user when started as root), listening on 127.0.0.1 only with password
  authentication; or an existing database given by ``--backend-store-uri postgresql+psycopg2://...`` (name the
  driver: with SQLAlchemy 2.1 a bare ``postgresql://`` selects psycopg 3, which is not installed);
- artifact store: ``--artifacts-destination s3://bucket/prefix`` with ``--s3-endpoint-url`` for a non-AWS S3
  (MinIO, Ceph) and the AWS_* credentials of the environment; without them, a local ``moto`` S3 server (a
  stand-in for tests and trials: it keeps objects in memory, so artifacts are gone when it stops);
- accounts: MLflow's basic-auth app with its user store in the same PostgreSQL; ``default_permission = READ``: a
  new account can read everything and write nowhere until it is granted EDIT (``add-user --role writer`` grants
  it on the team's experiments: every one a pipeline stage logs to, equitune-scan, -images, -nlg and -report,
  created by the admin when missing, so that every writer shares them and can run every stage, the report
  included; ``grant NAME`` gives an existing account the same); MLflow lets any account create experiments of its
  own.
The server binds to 127.0.0.1 unless ``--host`` says otherwise (then give ``--allowed-hosts`` too, and put TLS in
front of it: basic auth sends passwords in every request).
"""

from __future__ import annotations

import argparse
import configparser
import getpass
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # the repository's equitune, installed or not
from equitune.pipeline.services import (  # noqa: E402
    ServiceError,
    alive,
    detach,
    executor,
    free_port,
    log_tail,
    port_is_used,
    start,
    stop_pid,
)

BIN = Path(sys.executable).parent
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


# ----- PostgreSQL -----

def postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return candidates[-1]
    raise TeamServerError(f"PostgreSQL's {name} was not found: install the server (apt-get install postgresql; "
                          "scripts/setup.sh does it), or pass --backend-store-uri for an existing database")


def as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(folder: Path, port: int, password: str) -> None:
    data = folder / "postgres"
    if os.geteuid() == 0:
        import pwd
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise TeamServerError("running as root but there is no 'postgres' user to run PostgreSQL as: install "
                                  "Debian's postgresql package, or run this as an ordinary user") from None
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        pwfile = folder / "postgres-password.tmp"
        write_private(pwfile, password + "\n")
        if os.geteuid() == 0:
            os.chown(data, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            result = subprocess.run(as_postgres_user([postgres_bin("initdb"), "-D", str(data), "-U", "mlflow",
                                                      f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                                                      "--no-locale"]), capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            hint = (f"; the postgres user must be able to reach {folder} (its parent folders need o+x), or choose "
                    "another --dir" if os.geteuid() == 0 else "")
            raise TeamServerError(f"initdb failed: {result.stderr.strip()[-800:]}{hint}")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    result = subprocess.run(as_postgres_user([postgres_bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"),
                                              "-w", "-t", "120", "-o", options, "start"]),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise TeamServerError(f"PostgreSQL did not start: {result.stderr.strip()}\n{log_tail(data / 'server.log')}")
    for database in ("mlflow", "mlflow_auth"):
        create_database(port, password, database)


def create_database(port: int, password: str, name: str) -> None:
    import psycopg2
    connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", password=password, dbname="postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def stop_postgres(folder: Path) -> None:
    data = folder / "postgres"
    if (data / "postmaster.pid").exists():
        subprocess.run(as_postgres_user([postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, text=True)


# ----- background processes (moto, mlflow): mirakuru starts and waits, services.stop_pid stops -----

def start_service(command: list[str], what: str, log: Path, env: dict[str, str], timeout: float,
                  url: str | None = None, port: int | None = None) -> int:
    """Start ``command`` in the background, wait until it answers, and return its pid; it outlives this command
    (``stop`` ends it from the pid in the state file)."""
    return detach(start(executor(command, log=log, env=env, timeout=timeout, url=url, port=port), what, log))


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def ensure_bucket(endpoint: str, bucket: str) -> None:
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="moto",
                          aws_secret_access_key="moto")
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


# ----- accounts and permissions, through MLflow's own clients, as the admin -----

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


def server_url(args) -> str:
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

def command_start(args) -> None:
    folder = Path(args.dir).expanduser().resolve()
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
    admin = admin_credentials(args)
    if port_is_used(args.port):
        raise TeamServerError(f"port {args.port} is already in use: choose another --port")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o711)  # the postgres user must traverse it; nothing in it is readable by others
    (folder / "logs").mkdir(exist_ok=True)
    internal = internal_secrets(folder)
    state = {"dir": str(folder)}
    write_state(folder, state)
    # The services get this process's environment plus `env` (mirakuru's way): a client's MLFLOW_TRACKING_* (a user's
    # credentials, a URI) must not reach the server, so they leave this process first; `start` opens no client.
    for name in [name for name in os.environ if name.startswith("MLFLOW_TRACKING_")]:
        del os.environ[name]
    env = dict(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        if args.backend_store_uri:
            backend, auth_db = args.backend_store_uri, args.auth_store_uri or args.backend_store_uri
        else:
            state["postgres_port"] = args.postgres_port or free_port()
            write_state(folder, state)
            start_postgres(folder, state["postgres_port"], internal["postgres_password"])
            base = f"postgresql+psycopg2://mlflow:{internal['postgres_password']}@127.0.0.1:{state['postgres_port']}"
            backend, auth_db = f"{base}/mlflow", f"{base}/mlflow_auth"
        if backend.startswith("postgresql://"):
            raise TeamServerError("--backend-store-uri: write postgresql+psycopg2://... (with SQLAlchemy 2.1 a bare "
                                  "postgresql:// selects psycopg 3, which is not installed)")

        if args.artifacts_destination:
            destination = args.artifacts_destination
            if args.s3_endpoint_url:
                env["MLFLOW_S3_ENDPOINT_URL"] = args.s3_endpoint_url
        else:
            state["s3_port"] = args.s3_port or free_port()
            state["moto_pid"] = start_service([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p",
                                               str(state["s3_port"])], "the moto S3 server",
                                              folder / "logs" / "moto.log", env, timeout=120, port=state["s3_port"])
            write_state(folder, state)
            endpoint = f"http://127.0.0.1:{state['s3_port']}"
            ensure_bucket(endpoint, LOCAL_S3_BUCKET)
            destination = f"s3://{LOCAL_S3_BUCKET}/artifacts"
            env.update(MLFLOW_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="moto", AWS_SECRET_ACCESS_KEY="moto",
                       AWS_DEFAULT_REGION="us-east-1")

        auth_ini = folder / "basic_auth.ini"
        write_private(auth_ini, "[mlflow]\ndefault_permission = READ\n"
                                f"database_uri = {auth_db}\n"
                                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                                # Each request re-hashes the password (PBKDF2: about a second of CPU on a busy
                                # machine); MLflow's credential cache skips that for a minute. The cost: on a
                                # server with several workers a changed or deleted password works up to 60 s more.
                                f"auth_cache_ttl_seconds = {args.auth_cache_seconds}\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_ini), MLFLOW_AUTH_ADMIN_USERNAME=admin[0],
                   MLFLOW_AUTH_ADMIN_PASSWORD=admin[1], MLFLOW_FLASK_SERVER_SECRET_KEY=internal["flask_secret_key"],
                   MLFLOW_BACKEND_STORE_URI=backend)  # from the environment: no password on the command line
        command = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--artifacts-destination", destination,
                   "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
        if args.allowed_hosts:
            command += ["--allowed-hosts", args.allowed_hosts]
        client_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        state["url"] = f"http://{client_host}:{args.port}"
        state["mlflow_pid"] = start_service(command, "mlflow server", folder / "logs" / "mlflow.log", env,
                                            timeout=args.timeout, url=state["url"] + "/health")
        write_state(folder, state)
    except BaseException:
        stop(folder)
        raise
    print(f"[team-server] MLflow at {state['url']} (backend: PostgreSQL, artifacts: {destination}); state in {folder}")
    print("[team-server] clients: export MLFLOW_TRACKING_URI=" + state["url"] +
          " and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials);"
          " add accounts with: python scripts/team_server.py add-user NAME --role writer|reader")


def stop(folder: Path) -> None:
    state = read_state(folder)
    stop_pid(state.get("mlflow_pid"))
    stop_pid(state.get("moto_pid"))
    stop_postgres(folder)
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
    base, admin = server_url(args), admin_credentials(args)
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
    grant(server_url(args), admin_credentials(args), args.username, args.permission,
          team_experiments(args.experiments))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=os.environ.get("EQUITUNE_TEAM_DIR", str(DEFAULT_DIR)),
                        help=f"state folder, outside the repository (default {DEFAULT_DIR}, or $EQUITUNE_TEAM_DIR)")
    parser.add_argument("--admin-credentials", help="ini file with [admin] username, password (else the "
                        "MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD variables)")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start PostgreSQL, the S3 stand-in (unless given one) and mlflow server")
    start.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    start.add_argument("--port", type=int, default=5000)
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--allowed-hosts", help="Host headers to accept when binding beyond 127.0.0.1")
    start.add_argument("--postgres-port", type=int, help="port of the local PostgreSQL (default: a free one)")
    start.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"),
                       help="an existing database, postgresql+psycopg2://user:pw@host/db (default: "
                            "$MLFLOW_BACKEND_STORE_URI, which keeps the password off the command line)")
    start.add_argument("--auth-store-uri", help="database of the accounts (default: the backend store)")
    start.add_argument("--artifacts-destination", help="s3://bucket/prefix of a real S3 (default: a local moto one)")
    start.add_argument("--s3-endpoint-url", help="endpoint of a non-AWS S3 (MinIO, Ceph) for --artifacts-destination")
    start.add_argument("--s3-port", type=int, help="port of the local moto S3 server (default: a free one)")
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
