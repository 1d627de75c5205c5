"""The SLURM recipe (scripts/slurm/grid.sh + cell.sbatch) on a private one-node SLURM cluster: one array task per
grid cell, each in its own clone, results shared through the DVC remote's run-cache (moto S3), MLflow runs in one
store; then `dvc repro --pull` in the repository restores every cell without running one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.servers import S3_CREDENTIALS, s3_server, slurm_cluster
from helpers.toy_project import MATRIX_DVC_YAML, clean_env, make_toy_project, mlflow_runs, run

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs as root (CI does)")
def test_slurm_array_runs_one_cell_per_task_and_shares_through_the_run_cache(tmp_path):
    (tmp_path / "slurm").mkdir()
    with s3_server("dvc-cache") as endpoint, slurm_cluster(tmp_path / "slurm") as slurm_env:
        root = make_toy_project(tmp_path / "repo", dvc_yaml=MATRIX_DVC_YAML, epochs=1)
        env = clean_env(**S3_CREDENTIALS, SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"],
                        EQUITUNE_VENV=sys.prefix)
        run(["dvc", "remote", "add", "-d", "team", "s3://dvc-cache/grid"], root, env)
        run(["dvc", "remote", "modify", "team", "endpointurl", endpoint], root, env)
        grid = ["bash", str(SCRIPTS / "slurm" / "grid.sh"), "train@.*", "--cpus-per-task=1",
                f"--output={tmp_path}/slurm-%A_%a.out"]

        dirty = run(grid, root, {**env, "MLFLOW_TRACKING_URI": "sqlite:///x.db"}, check=False)
        assert dirty.returncode == 2 and "uncommitted changes" in dirty.stderr, dirty.stderr
        run(["git", "commit", "-qam", "the team's remote"], root, env)
        untracked = run(grid, root, env, check=False)
        assert untracked.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in untracked.stderr, untracked.stderr

        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"  # the tasks' shared store
        submitted = run(grid, root, env)
        assert "2 cell(s)" in submitted.stdout, submitted.stdout
        job = submitted.stdout.split("job ", 1)[1].split(":", 1)[0]
        deadline = time.monotonic() + 400
        while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline, "the array job did not finish within 400 s"
            time.sleep(2)
        logs = {task: (tmp_path / f"slurm-{job}_{task}.out").read_text() for task in (0, 1)}
        for task, cell in ((0, "train@1"), (1, "train@2")):
            assert f"[cell] {cell} (task {task}" in logs[task], logs[task]
            assert f"Running stage '{cell}'" in logs[task] and "[shared-cache] pushed" in logs[task], logs[task]
        assert not list(Path("/tmp").glob(f"equitune-{job}-*")), "a task left its clone behind"

        # Back in the repository: nothing computed here, everything restored from the tasks' run-cache.
        progress = tmp_path / "progress.txt"
        fetched = subprocess.run([sys.executable, str(SCRIPTS / "shared_cache.py"), "fetch"], cwd=root, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert fetched.returncode == 0, fetched.stderr
        restored = run(["dvc", "repro", "--pull"], root, {**env, "TOY_PROGRESS": str(progress)}, timeout=300)
        assert restored.stdout.count("is cached - skipping run") == 2, restored.stdout
        assert not progress.exists()
        runs = mlflow_runs(root / "mlflow.db")
        assert sorted((r.data.tags["dvc.stage"], r.info.status) for r in runs) == [
            ("train@1", "FINISHED"), ("train@2", "FINISHED")]
