"""The pipeline machinery end to end on the toy DVC project: parallel queued experiments land in one MLflow
store, and `mlflow server` serves the runs of a pipeline run through its REST API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from equitune.pipeline.services import executor, free_port, running
from helpers.toy_project import clean_env, make_toy_project, mlflow_runs, progress_lines, run, wait_for


def queue_status(root) -> dict[str, int]:
    """Counts of queued experiments by status, from `dvc queue status`."""
    counts: dict[str, int] = {}
    for line in run(["dvc", "queue", "status"], root).stdout.splitlines():
        for status in ("Queued", "Running", "Success", "Failed"):
            if f" {status} " in f" {line} ":
                counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.mark.slow
def test_queued_experiments_run_in_parallel_into_one_store(tmp_path):
    root = make_toy_project(tmp_path / "toy", seed=0, epochs=2, epoch_seconds=0.5)
    # Each stage holds its run open until the gate opens, which the test does only once both stages have started:
    # the two experiments can only succeed if two workers run them at the same time.
    progress, gate = tmp_path / "progress.txt", tmp_path / "gate"
    env = clean_env(TOY_PROGRESS=str(progress), TOY_GATE=str(gate))
    for seed in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-S", f"toy.seed={seed}", "-n", f"seed{seed}"], root, env)
    try:
        # One worker per GPU, the README's recipe: worker N is started with its own CUDA_VISIBLE_DEVICES, which
        # its experiments inherit (on this CPU machine the variable is only recorded, as a run tag).
        # The workers are daemons that inherit the caller's stdout: with a captured one, waiting for it would wait
        # for the workers to finish.
        for count, device in ((1, "0"), (2, "1")):
            subprocess.run(["dvc", "queue", "start", "-j", str(count)], cwd=root, env={**env, "CUDA_VISIBLE_DEVICES": device},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)
        wait_for(lambda: sum(line.startswith("pid") for line in progress_lines(progress)) == 2, timeout=240,
                 interval=1, what="both queued stages to start")
        gate.touch()
        wait_for(lambda: queue_status(root).get("Success", 0) + queue_status(root).get("Failed", 0) == 2,
                 timeout=240, interval=2, what="both queued experiments to finish")
        statuses = queue_status(root)
        logs = "" if statuses == {"Success": 2} else run(["dvc", "queue", "logs", "seed1"], root, check=False).stdout
        assert statuses == {"Success": 2}, logs
    finally:
        gate.touch()
        run(["dvc", "queue", "stop"], root, env, check=False)

    # Stages ran in copies under .dvc/tmp/exps, yet DVC_ROOT pointed at this repo: one store, both runs.
    runs = mlflow_runs(root / "mlflow.db")
    assert sorted((r.data.tags["seed"], r.data.tags["dvc.exp"], r.info.status, r.info.run_name) for r in runs) == [
        ("1", "seed1", "FINISHED", "train"), ("2", "seed2", "FINISHED", "train")]
    assert all(r.info.artifact_uri.startswith((root / "mlartifacts").as_uri()) for r in runs)
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    # The runs overlapped in time: the two experiments really ran in parallel.
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time
    # Each worker ran one experiment, on its own device.
    assert sorted(r.data.tags.get("env.CUDA_VISIBLE_DEVICES") for r in runs) == ["0", "1"]
    # And DVC recorded both experiments' metrics.
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    names = {exp.get("name") for entry in shown for exp in (entry.get("experiments") or [])}
    assert {"seed1", "seed2"} <= names


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_server_serves_the_pipeline_runs(tmp_path):
    root = make_toy_project(tmp_path / "toy", seed=4, epochs=3)
    run(["dvc", "repro"], root)
    metrics_file = json.loads((root / "metrics" / "toy.json").read_text())

    base = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "mlflow-server.log"
    server = executor([os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
                       f"sqlite:///{root / 'mlflow.db'}", "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1],
                       "--workers", "1"], log=log, env=clean_env(), timeout=120, url=base + "/health")
    with running(server, "mlflow server", log):
        experiment = api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=equitune-toy")["experiment"]
        found = api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]

    assert len(found) == 1
    served = found[0]
    assert served["info"]["run_name"] == "train" and served["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in served["data"]["tags"]}
    assert (tags["task"], tags["seed"], tags["dvc.stage"]) == ("toy", "4", "train")
    params = {p["key"]: p["value"] for p in served["data"]["params"]}
    assert params["seed"] == "4" and params["epochs"] == "3"
    metrics = {m["key"]: m["value"] for m in served["data"]["metrics"]}
    assert metrics["loss"] == metrics_file["loss"]
    assert metrics["test/accuracy"] == metrics_file["test"]["accuracy"]
    # The direct read of the store agrees with what the server says.
    assert [r.info.run_id for r in mlflow_runs(root / "mlflow.db")] == [served["info"]["run_id"]]
