"""The team server's recipe (deploy/team-server: docker-compose.yml, .env.example, basic_auth.ini, Dockerfile) and
the no-Docker path (`scripts/team_server.py start`) are one server: the same mlflow command, the same variables, the
same accounts' settings, pinned images, and no secret in the repository.

Docker cannot run here; what compose would do with these files is read from them (PyYAML) and, for the mlflow
service's entrypoint, run with this machine's Python.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.paths import load_script

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "deploy" / "team-server"
SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY")
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Z0-9_]+)(?P<rule>:[-?][^}]*)?\}")  # $${...}: for the container


def load_team_server():
    return load_script(REPO / "scripts" / "team_server.py")


def compose() -> dict:
    return yaml.safe_load((RECIPE / "docker-compose.yml").read_text())


def strings(node) -> list[str]:
    """Every string in a parsed YAML document (compose interpolates these, not the comments)."""
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in strings(key) + strings(value)]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    return [node] if isinstance(node, str) else []


def env_example() -> dict[str, str]:
    lines = (RECIPE / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def sample_values(module, folder: Path) -> dict[str, str | None]:
    return module.server_values(
        folder, backend="postgresql+psycopg2://mlflow:pw@127.0.0.1:5432/mlflow",
        destination="s3://bucket/artifacts", s3={"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
                                                 "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                                 "AWS_DEFAULT_REGION": "us-east-1"},
        admin=("admin", "a-long-admin-password"), secret_key="flask", host="127.0.0.1", port=5123, workers=1,
        allowed_hosts=None, auth_cache_seconds=60)


def test_the_no_docker_path_runs_the_recipes_command_with_the_recipes_variables(tmp_path):
    module = load_team_server()
    service = compose()["services"]["mlflow"]
    assert service["command"][:2] == ["mlflow", "server"], service["command"]
    assert {"--app-name", "basic-auth", "--serve-artifacts"} <= set(service["command"]), service["command"]
    values = sample_values(module, tmp_path)
    assert set(values) == set(service["environment"])  # the same variable names, none more, none fewer
    (tmp_path / "logs").mkdir()
    server = module.mlflow_executor(tmp_path, values, timeout=1)  # built, not started
    assert server.command_parts == [str(module.BIN / "mlflow"), *service["command"][1:]]
    assert {name: value for name, value in values.items() if value}.items() <= server.envvars.items()

    # A variable the recipe adds and the script does not fill stops `start` with its name, before anything runs.
    grown = {**service, "environment": {**service["environment"], "MLFLOW_NEW_SETTING": "x"}}
    module.recipe_service = lambda: grown
    with pytest.raises(module.TeamServerError, match="sets MLFLOW_NEW_SETTING, which scripts/team_server.py does"):
        module.mlflow_executor(tmp_path, values, timeout=1)


def test_env_example_names_every_variable_compose_reads_and_holds_no_secret():
    text = "\n".join(strings(compose()))
    read = {match["name"] for match in INTERPOLATION.finditer(text)}
    example = env_example()
    assert read == set(example), (read ^ set(example))
    for name in SECRETS:
        assert example[name] == "", f".env.example gives {name} a value: secrets are generated into .env"
        rules = {match["rule"] for match in INTERPOLATION.finditer(text) if match["name"] == name}
        assert rules and all(rule and rule.startswith(":?") for rule in rules), (name, rules)  # compose refuses
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET", name):
                assert INTERPOLATION.fullmatch(str(value)), f"{name} has a value in docker-compose.yml"
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/team-server/.env"], cwd=REPO)
    assert ignored.returncode == 0, "deploy/team-server/.env (the passwords) is not git-ignored"


def test_only_the_mlflow_server_is_published_and_on_127_0_0_1_unless_told():
    services = compose()["services"]
    assert [name for name, service in services.items() if service.get("ports")] == ["mlflow"]
    assert services["mlflow"]["ports"] == ["${TEAM_SERVER_ADDRESS:-127.0.0.1}:${TEAM_SERVER_PORT:-5000}:5000"]
    assert env_example()["TEAM_SERVER_ADDRESS"] == "127.0.0.1"
    environment = services["mlflow"]["environment"]
    assert environment["MLFLOW_AUTH_DATABASE_URI"] == environment["MLFLOW_BACKEND_STORE_URI"]  # one PostgreSQL
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert environment["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_the_auth_ini_reads_everything_writes_nothing_and_takes_the_admin_from_mlflows_variables(tmp_path,
                                                                                              monkeypatch):
    module = load_team_server()
    raw = configparser.ConfigParser(interpolation=None)
    raw.read(RECIPE / "basic_auth.ini")
    assert raw["mlflow"]["default_permission"] == "READ"
    assert not {"admin_username", "admin_password"} & set(raw["mlflow"]), "the admin belongs in MLFLOW_AUTH_ADMIN_*"

    # The container's entrypoint (compose's, run here with this Python) and the script fill it alike, and MLflow's
    # own reader takes the database from it and the admin from its variables.
    values = {name: value for name, value in sample_values(module, tmp_path).items() if value}
    values["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "rendered.ini")
    entrypoint = compose()["services"]["mlflow"]["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"]
    show = [sys.executable, "-c", "import os; print(open(os.environ['MLFLOW_AUTH_CONFIG_PATH']).read(), end='')"]
    rendered = subprocess.run([sys.executable, "-c", entrypoint[2], str(RECIPE / "basic_auth.ini"), *show],
                              env=values, capture_output=True, text=True, check=True).stdout
    assert rendered == module.auth_config(values)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    from mlflow.server.auth.config import read_auth_config
    config = read_auth_config()
    assert (config.default_permission, config.database_uri) == ("READ", values["MLFLOW_AUTH_DATABASE_URI"])
    assert (config.admin_username, config.admin_password) == ("admin", "a-long-admin-password")
    assert config.auth_cache_ttl_seconds == 60


def test_images_are_pinned_to_the_projects_versions():
    import mlflow
    images = {name: service.get("image") for name, service in compose()["services"].items()}
    assert images["postgres"] == "postgres:15"
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images["minio"])
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images["create-bucket"])
    assert images["mlflow"] == f"equitune-team-mlflow:{mlflow.__version__}"
    requirements = dict(line.split("==", 1) for line in (REPO / "requirements.txt").read_text().splitlines()
                        if "==" in line and not line.startswith("#"))
    dockerfile = (RECIPE / "Dockerfile").read_text()
    assert f"FROM ghcr.io/mlflow/mlflow:v{requirements['mlflow']}\n" in dockerfile
    assert requirements["mlflow"] == mlflow.__version__
    installed = re.findall(r"(\S+)==(\S+)", dockerfile.split("RUN pip install", 1)[1])
    assert installed and all(requirements[name] == version for name, version in installed), installed
