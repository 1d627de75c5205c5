"""MLflow conventions (src/equitune/pipeline/tracking/), checked on a toy stage against a store in tmp_path.

The toy stage (tests/helpers/assets/toy_stage.py) runs as a subprocess the way DVC runs a stage (DVC_ROOT and
DVC_STAGE set, cwd = project root), so signals, exit codes and the store location are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equitune.pipeline import tracking
from equitune.pipeline.mlflow_views import view_for
from equitune.pipeline.tracking import store as tracking_store
from helpers.toy_project import ASSETS, clean_env, copy_empty_store, mlflow_runs, progress_lines, wait_for, write_params

# mlflow.source.git.commit: MLflow's own tag (its git context reads the stage script's checkout).
TAGS = ("task", "model", "method", "group", "seed", "profile", "mlflow.source.git.commit", "git.dirty", "dvc.stage",
        "params_hash", "cpu.isa", "cpu.capability", "cpu.onednn_isa", "cpu.mkl_cbwr", "cpu.vendor")


def start_toy_stage(root: Path, stage: str = "train@0", **env) -> subprocess.Popen:
    """The toy stage as DVC would start it, with the store located only by DVC_ROOT."""
    return subprocess.Popen([sys.executable, str(ASSETS / "toy_stage.py")], cwd=root,
                            env=clean_env(DVC_ROOT=str(root), DVC_STAGE=stage, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(autouse=True)
def _no_outer_store(monkeypatch, tmp_path):
    """In-process tests choose their store explicitly; nothing may fall back to the real repository."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "not-the-real-repo"))


def test_store_location_from_dvc_root_and_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.repo_root() == tmp_path.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def test_params_hash_is_stable_and_order_free():
    assert tracking.params_hash({"a": 1, "b": [1, 2]}) == tracking.params_hash({"b": [1, 2], "a": 1})
    assert tracking.params_hash({"a": 1}) != tracking.params_hash({"a": 2})


def test_server_retries_are_bounded_unless_the_environment_sets_them(monkeypatch):
    for name in tracking.SERVER_RETRY_DEFAULTS:
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)  # restored (removed) after the test
    tracking_store.bound_server_retries("sqlite:////tmp/mlflow.db")
    assert not any(name in os.environ for name in tracking.SERVER_RETRY_DEFAULTS)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    tracking_store.bound_server_retries("http://127.0.0.1:5000")
    assert {name: os.environ[name] for name in tracking.SERVER_RETRY_DEFAULTS} == {
        **tracking.SERVER_RETRY_DEFAULTS, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"}


def test_a_server_failure_is_told_from_a_refused_request():
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED
    url = "http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch"
    exhausted = MlflowException(f"API request to {url} failed with exception HTTPConnectionPool(host='127.0.0.1', "
                                "port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch (Caused by "
                                "ResponseError('too many 503 error responses'))")
    assert tracking_store.is_server_failure(exhausted)
    assert tracking_store.failure_reason(exhausted) == "too many 503 error responses from /api/2.0/mlflow/runs/log-batch"
    assert tracking_store.is_server_failure(requests.exceptions.ConnectionError("refused"))
    assert not tracking_store.is_server_failure(MlflowException("param changed", error_code=INVALID_PARAMETER_VALUE))
    assert not tracking_store.is_server_failure(MlflowException("no", error_code=PERMISSION_DENIED))
    assert not tracking_store.is_server_failure(RuntimeError("a bug in the stage"))


@pytest.mark.slow
def test_toy_stage_run_has_every_convention(tmp_path):
    """One stage run: experiment, run name = the cell of the DVC stage, tags, params, per-epoch metrics, final =
    metrics file."""
    write_params(tmp_path, seed=3, epochs=3)
    copy_empty_store(tmp_path / "mlflow.db")
    process = start_toy_stage(tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr

    store = tmp_path / "mlflow.db"
    runs = mlflow_runs(store)  # only there if DVC_ROOT decided where the store is
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "0"  # the matrix item of train@0; the stage is in the tag and the description
    tags = run.data.tags
    assert tags["mlflow.note.content"] == ("DVC stage `train@0` of the `toy` experiment, profile `default`. Cell: "
                                           "model `toy-mlp`, method `equitune`, group `c4`, seed `3`.")
    assert all(tags.get(name) for name in TAGS), {name: tags.get(name) for name in TAGS}
    assert (tags["task"], tags["model"], tags["method"], tags["group"], tags["seed"], tags["profile"],
            tags["dvc.stage"]) == ("toy", "toy-mlp", "equitune", "c4", "3", "default", "train@0")
    assert tags["params_hash"] == tracking.params_hash(
        {"seed": 3, "epochs": 3, "epoch_seconds": 0.0, "fail_at_epoch": None})
    # The cell under short keys, then the settings (a settings key equal to a cell key moves under settings/).
    assert run.data.params == {"model": "toy-mlp", "method": "equitune", "group": "c4", "seed": "3",
                               "settings/seed": "3", "epochs": "3", "epoch_seconds": "0.0", "fail_at_epoch": "None"}
    # The kernels the run used (the suite runs stages with EQUITUNE_CPU_ISA=native, see conftest).
    assert (tags["cpu.isa"], tags["cpu.capability"]) == ("native", torch.backends.cpu.get_cpu_capability())

    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    history = client.get_metric_history(run.info.run_id, "lr")
    assert sorted(m.step for m in history) == [0, 1, 2]
    # The final dict re-logs "loss" (also logged per epoch): MLflow's latest value must be the final one.
    written = json.loads((tmp_path / "metrics" / "toy.json").read_text())
    assert run.data.metrics == {"loss": written["loss"], "test/accuracy": written["test"]["accuracy"],
                                "epochs": written["epochs"], "lr": 0.1}
    # Artifacts go beside the database, not into the stage's working directory.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    for name in ("scan", "images", "nlg", "toy"):
        experiment = client.get_experiment_by_name(f"equitune-{name}")
        assert experiment.tags["mlflow.note.content"] == view_for(name).description
        assert json.loads(experiment.tags["mlflow.sharedViewState.cells"])["name"] == "Cells"
    # The checkpoint is referenced by its DVC hash (for a file: the md5 of its bytes), not copied.
    checkpoint = (tmp_path / "outputs" / "model.ckpt").read_bytes()
    assert tags["checkpoint.dvc_md5"] == hashlib.md5(checkpoint).hexdigest()
    assert tags["checkpoint.path"] == "outputs/model.ckpt"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == []


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(tmp_path):
    write_params(tmp_path, seed=0, epochs=50, epoch_seconds=0.5)
    copy_empty_store(tmp_path / "mlflow.db")
    progress = tmp_path / "progress.txt"
    process = start_toy_stage(tmp_path, TOY_PROGRESS=str(progress))
    try:
        wait_for(lambda: any(line.startswith("writing") for line in progress_lines(progress)), timeout=120,
                 what="the toy stage to start training")
        assert [run.info.status for run in mlflow_runs(tmp_path / "mlflow.db")] == ["RUNNING"]
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM
    assert [run.info.status for run in mlflow_runs(tmp_path / "mlflow.db")] == ["KILLED"]
    assert not (tmp_path / "metrics" / "toy.json").exists()
    assert not list((tmp_path / "outputs").glob("*.tmp")), "the interrupted checkpoint write must be cleaned up"


def test_short_run_name_is_the_cell():
    assert tracking.short_run_name("scan_pretrain@add_jump-lstm-0", "scan") == "add_jump-lstm-0"
    assert tracking.short_run_name("images_features", "images") == "images_features"
    assert tracking.short_run_name("", "nlg") == "nlg"


def test_log_final_logs_each_result_once_and_curves_as_step_series(monkeypatch, tmp_path):
    """A SCAN tune cell's shape: the curve logged step by step, then the metrics file whose ``curve`` entry copies
    it (``curve/<method>/step_<n>_test_accuracy``). One key per curve with every step, each final metric once under
    its metrics-file key, no ``curve/...`` key."""
    store = copy_empty_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    steps = {0: 0.25, 100: 0.5, 400: 0.75}
    metrics = {"equitune": {"test_accuracy": 0.75}, "group_order": 2,
               "curve": {"equitune": {f"step_{s}_test_accuracy": v for s, v in steps.items()}}}
    with tracking.tracked_run("toy", profile="default", params={}, tags={"seed": 0}) as run:
        for step, value in steps.items():
            run.log_metrics({"equitune_test_accuracy": value}, step=step)
        with pytest.raises(KeyError, match="history"):
            run.log_final(metrics, series=("history",))
        run.log_final(metrics, series=("curve",))
        run_id = run.run_id
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    assert set(client.get_run(run_id).data.metrics) == {"equitune_test_accuracy", "equitune/test_accuracy",
                                                        "group_order"}
    history = client.get_metric_history(run_id, "equitune_test_accuracy")
    assert {m.step: m.value for m in history} == steps and len(history) == 3
    assert [m.value for m in client.get_metric_history(run_id, "equitune/test_accuracy")] == [0.75]


def test_log_final_relogs_a_curve_key_only_when_the_final_value_differs(monkeypatch, tmp_path):
    """A final metric under a curve's key (validation accuracy of the best checkpoint): equal to the curve's last
    point it is not logged again; different (an earlier checkpoint was best) it is, at the last step, so that
    MLflow's latest value is the metrics file's."""
    store = copy_empty_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with tracking.tracked_run("toy", profile="default", params={}, tags={"seed": 0}) as run:
        for step, (accuracy, loss) in enumerate([(0.5, 2.0), (0.9, 1.0), (0.8, 0.5)]):
            run.log_metrics({"validation_accuracy": accuracy, "train_loss": loss}, step=step)
        run.log_final({"validation_accuracy": 0.9, "train_loss": 0.5})
        run_id = run.run_id
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [(0, 2.0), (1, 1.0),
                                                                                            (2, 0.5)]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "validation_accuracy")) == [
        (0, 0.5), (1, 0.9), (2, 0.8), (2, 0.9)]
    assert client.get_run(run_id).data.metrics["validation_accuracy"] == 0.9


def test_exception_ends_the_run_failed(monkeypatch, tmp_path):
    """In process, with MLFLOW_TRACKING_URI pointing somewhere else than DVC_ROOT: the URI wins."""
    store = copy_empty_store(tmp_path / "elsewhere" / "store.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.tracked_run("toy", profile="default", params={"lr": 0.1}, tags={"seed": 1}) as run:
            run.log_metrics({"loss": 1.0}, step=0)
            raise RuntimeError("boom")
    runs = mlflow_runs(store)
    assert [(r.info.status, r.info.run_name, r.data.tags["dvc.stage"]) for r in runs] == [
        ("FAILED", "toy", "(not run by dvc)")]
    assert not (tmp_path / "repo" / "mlflow.db").exists()
    import mlflow
    assert mlflow.active_run() is None


def test_run_orphaned_by_a_dead_process_is_closed_killed(monkeypatch, tmp_path):
    """A SIGKILLed stage leaves its run RUNNING; the next run of the task on this host closes it as KILLED."""
    import mlflow
    store = copy_empty_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    tracking.ensure_store(("toy",))
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("equitune-toy")
    finished = subprocess.Popen(["true"])  # a pid whose process has surely exited
    finished.wait()
    host = socket.gethostname()
    orphan = client.create_run(experiment.experiment_id, tags={"task": "toy", "host": host, "pid": str(finished.pid)})
    # The parent of this test process is alive: its run must be left alone.
    alive = client.create_run(experiment.experiment_id, tags={"task": "toy", "host": host, "pid": str(os.getppid())})
    with tracking.tracked_run("toy", profile="default", params={}, run_name="next"):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


@pytest.mark.slow
def test_store_creation_is_safe_from_parallel_processes(tmp_path):
    """Several processes creating a fresh SQLite store at once: all succeed, each experiment exists once."""
    store = tmp_path / "fresh" / "mlflow.db"
    code = "from equitune.pipeline.tracking import ensure_store; ensure_store(('scan', 'images', 'nlg', 'toy'))"
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [p.communicate(timeout=180)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(errors)
    import mlflow
    names = sorted(e.name for e in mlflow.MlflowClient(f"sqlite:///{store}").search_experiments())
    assert names == sorted(["Default", "equitune-images", "equitune-nlg", "equitune-scan", "equitune-toy"])


@pytest.mark.slow
def test_a_copied_checkout_writes_artifacts_into_its_own_store(tmp_path):
    """MLflow stores an experiment's artifact location as an absolute file:// URI: a copied (or moved) checkout's
    store still names the original's mlartifacts/. A run in the copy must write there, not into the original."""
    import shutil

    def stage(root: Path) -> None:
        process = subprocess.Popen([sys.executable, str(ASSETS / "toy_stage.py"), "--figure", "figures/loss.png"],
                                   cwd=root, env=clean_env(DVC_ROOT=str(root), DVC_STAGE="train"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    write_params(original, seed=1, epochs=1)
    copy_empty_store(original / "mlflow.db")
    stage(original)
    shutil.copytree(original, copy)
    stage(copy)

    def figures(root: Path) -> list[str]:
        return sorted(p.relative_to(root / "mlartifacts").as_posix()
                      for p in (root / "mlartifacts").rglob("loss.png"))

    assert len(figures(original)) == 1, "the copy's run wrote into the original checkout"
    assert len(figures(copy)) == 2  # the copied run's figure and the new one
    runs = mlflow_runs(copy / "mlflow.db")
    assert len(runs) == 2
    for run in runs:  # the copied run too: its artifacts came along with the copy
        assert run.info.artifact_uri.startswith((copy / "mlartifacts" / "equitune-toy").as_uri() + "/"), run
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    assert client.get_experiment_by_name("equitune-toy").artifact_location == (
        copy / "mlartifacts" / "equitune-toy").as_uri()
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "figures")] == ["figures/loss.png"]
    assert [r.info.artifact_uri for r in mlflow_runs(original / "mlflow.db")] == [runs[0].info.artifact_uri.replace(
        copy.as_uri(), original.as_uri())]
