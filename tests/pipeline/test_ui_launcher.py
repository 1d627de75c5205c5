"""`make ui` (python -m equitune.pipeline.ui) on bad input: no store, a store without runs, a port in use. Each is
one message and exit code 2, before any server starts. (The working launcher is exercised in a real browser by
tests/scripts/test_mlflow_browser.py.)"""

from __future__ import annotations

import socket

import pytest

from equitune.pipeline import ui
from helpers.toy_project import copy_empty_store


@pytest.fixture(autouse=True)
def _store_in(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setattr(ui, "serve", lambda *args: pytest.fail("no server may start on bad input"))


def test_no_store_says_how_to_make_one(tmp_path, capsys):
    assert ui.main([]) == 2
    message = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path.resolve() / 'mlflow.db'}" in message
    assert "make repro" in message and "dvc repro" in message
    assert not (tmp_path / "mlflow.db").exists()


def test_a_store_without_runs_says_how_to_make_them(tmp_path, capsys):
    copy_empty_store(tmp_path / "mlflow.db")
    assert ui.main([]) == 2
    message = capsys.readouterr().err
    assert "holds no runs of this project yet" in message and "make repro" in message and "--force" in message


def _store_with_a_run(tmp_path):
    import mlflow
    store = copy_empty_store(tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    client.create_run(client.create_experiment("equitune-toy"))
    return store


def test_a_port_in_use_is_named_with_what_to_do(tmp_path, capsys):
    _store_with_a_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert ui.main(["--port", str(port)]) == 2
    message = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in message and f"make ui PORT={port + 1}" in message


def test_links_name_each_experiment_with_runs(tmp_path):
    _store_with_a_run(tmp_path)
    experiments = ui.check_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [(name, runs) for name, _, runs in experiments] == [("equitune-toy", 1)]
    (line,) = ui.experiment_links("http://127.0.0.1:5000", experiments)
    assert "equitune-toy" in line and "1 runs" in line
    assert line.endswith(f"/#/experiments/{experiments[0][1]}/runs?workflowType=machine_learning&viewStateShareKey=cells")


def test_a_tracking_server_gets_its_links_and_no_local_server(monkeypatch, capsys):
    """MLFLOW_TRACKING_URI pointing at a team's server: the links go to that server, nothing is started here."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    seen = []
    monkeypatch.setattr(ui, "_experiments_with_runs", lambda uri: seen.append(uri) or [("equitune-scan", "7", 12)])
    assert ui.main([]) == 0
    assert seen == ["http://mlflow.example:5000"]
    assert ("http://mlflow.example:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=cells"
            in capsys.readouterr().out)
