"""Atomic outputs: a toy DVC stage killed half-way through writing a checkpoint, then `dvc repro` again.

The rerun must complete with no manual cleanup, leave no temporary files, close the interrupted MLflow run,
and a further `dvc repro` must run nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from equitune.pipeline.io import atomic_path, read_json, write_json, write_text
from helpers.toy_project import clean_env, make_toy_project, mlflow_runs, progress_lines, run, temp_files, wait_for


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "model.ckpt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert temp_files(tmp_path) == []


INTERRUPTED_WRITE = """
import resource, signal, sys
from equitune.pipeline.io import write_json, write_text
# The disk "fills up" after 4096 bytes: a write past that fails with EFBIG, half-way through the new content.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
writer, target = sys.argv[1], sys.argv[2]
if writer == "write_json":
    write_json(target, {"values": list(range(5000))})
else:
    write_text(target, "new line\\n" * 5000)
"""


@pytest.mark.parametrize("writer", ["write_json", "write_text"])
def test_a_write_interrupted_halfway_keeps_the_old_file_and_leaves_no_temp(tmp_path, writer):
    """The new content is larger than the file-size limit, so the write stops half-way (as on a full disk or a
    killed process): the target must still hold the old content, whole, and no temporary file may remain."""
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    old = target.read_text()
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_WRITE, writer, str(target)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "File too large" in result.stderr, result.stderr
    assert target.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_products_get_ordinary_permissions(tmp_path):
    write_json(tmp_path / "m.json", {"accuracy": 0.5})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert read_json(tmp_path / "m.json") == {"accuracy": 0.5}


def test_non_finite_metric_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """What SIGKILL leaves (DVC removes a file out itself, not the temp files beside it) goes on the next write."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = tmp_path / f".model.ckpt.{finished.pid}.abc123.tmp"
    live = tmp_path / f".model.ckpt.{os.getppid()}.def456.tmp"
    other = tmp_path / f".other.ckpt.{finished.pid}.abc123.tmp"
    for path in (dead, live, other):
        path.write_text("half")
    write_text(tmp_path / "model.ckpt", "whole")
    assert not dead.exists()
    assert live.exists() and other.exists(), "another writer's file, and other targets' temps, are left alone"


@pytest.mark.slow
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stage_killed_mid_write_then_repro_completes(tmp_path, kill_signal):
    root = make_toy_project(tmp_path / "toy", seed=1, epochs=3, epoch_seconds=1.0)
    progress = tmp_path / "progress.txt"
    # Its own process group, like a terminal job or a CI step: the signal reaches dvc and the stage together.
    repro = subprocess.Popen(["dvc", "repro"], cwd=root, env=clean_env(TOY_PROGRESS=str(progress)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: "writing 1" in progress_lines(progress), timeout=120,
                 what="the toy stage to be half-way through its second checkpoint")
        os.killpg(repro.pid, kill_signal)
        repro.communicate(timeout=60)
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
            repro.wait()
    # The stage process may outlive dvc by a moment; wait until it is gone before looking at its files.
    stage_pid = int(next(line for line in progress_lines(progress) if line.startswith("pid ")).split()[1])
    wait_for(lambda: not os.path.exists(f"/proc/{stage_pid}"), timeout=30, what="the stage process to exit")

    assert repro.returncode != 0
    assert not (root / "metrics" / "toy.json").exists()
    assert (root / "outputs" / "model.ckpt").read_text().startswith("epoch 0"), "epoch 0's checkpoint is whole"
    leftovers = temp_files(root)
    statuses = [r.info.status for r in mlflow_runs(root / "mlflow.db")]
    if kill_signal == signal.SIGKILL:
        assert leftovers, "SIGKILL mid-write must leave the temp file (else this test checks nothing)"
        assert statuses == ["RUNNING"]
    else:
        assert leftovers == [], "on SIGTERM the stage removes its own temp file"
        assert statuses == ["KILLED"]

    # No manual cleanup: just run it again.
    rerun = run(["dvc", "repro"], root)
    assert "Running stage 'train'" in rerun.stdout
    assert temp_files(root) == []
    assert json.loads((root / "metrics" / "toy.json").read_text())["epochs"] == 3
    assert (root / "outputs" / "model.ckpt").read_text().splitlines()[-1].startswith("epoch 2 second half")
    assert run(["dvc", "status", "-q"], root, check=False).returncode == 0
    # The interrupted run is closed (by its own handler on SIGTERM, by the next run after SIGKILL).
    assert [r.info.status for r in mlflow_runs(root / "mlflow.db")] == ["KILLED", "FINISHED"]

    started = time.monotonic()
    noop = run(["dvc", "repro"], root)
    print(f"no-op dvc repro of the toy project: {time.monotonic() - started:.2f} s")
    assert "Stage 'train' didn't change, skipping" in noop.stdout
    assert "Running stage" not in noop.stdout
    assert len(mlflow_runs(root / "mlflow.db")) == 2
