"""Shared results through a DVC remote on S3 (moto as the stand-in) and DVC's run-cache (scripts/shared_cache.py).

Machine A computes a two-cell grid and pushes; machine B, a fresh clone with no cache, no outputs and no lock
entries for the cells, fetches and `dvc repro --pull` restores both cells without running the stage once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.servers import S3_CREDENTIALS, s3_server
from helpers.toy_project import MATRIX_DVC_YAML, clean_env, make_toy_project, run

SHARED_CACHE = Path(__file__).resolve().parents[2] / "scripts" / "shared_cache.py"
OUTPUTS = ["outputs/model-1.ckpt", "outputs/model-2.ckpt", "metrics/toy-1.json", "metrics/toy-2.json"]


def shared_cache(root: Path, command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SHARED_CACHE), command], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def without_aws(env: dict[str, str], home: Path) -> dict[str, str]:
    """No AWS variables and a HOME without ~/.aws: no credentials anywhere."""
    return {**{k: v for k, v in env.items() if not k.startswith("AWS_")}, "HOME": str(home)}


@pytest.mark.slow
def test_run_cache_on_s3_restores_every_cell_on_another_machine(tmp_path):
    with s3_server("dvc-cache") as endpoint:
        machine_a = make_toy_project(tmp_path / "a", dvc_yaml=MATRIX_DVC_YAML, epochs=1)
        env = clean_env(**S3_CREDENTIALS)
        run(["dvc", "remote", "add", "-d", "team", "s3://dvc-cache/equitune"], machine_a, env)
        run(["dvc", "remote", "modify", "team", "endpointurl", endpoint], machine_a, env)
        run(["git", "commit", "-qam", "the team's remote (no credentials: those stay outside the repository)"],
            machine_a, env)

        # Without credentials: a clear error before any transfer, not DVC's mid-transfer "Unable to locate".
        denied = shared_cache(machine_a, "push", without_aws(env, tmp_path))
        assert denied.returncode == 1, denied.stdout + denied.stderr
        assert "no S3 credentials for DVC remote 'team' (s3://dvc-cache/equitune)" in denied.stderr, denied.stderr
        assert "AWS_ACCESS_KEY_ID" in denied.stderr and "dvc remote modify --local team" in denied.stderr

        run(["dvc", "repro"], machine_a, env, timeout=300)
        pushed = shared_cache(machine_a, "push", env)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert "2 more object(s)" in pushed.stdout, pushed.stdout  # the two uncached metrics files

        # Machine B: the same commit, nothing computed, no lock entries (the cells were never committed).
        machine_b = tmp_path / "b"
        run(["git", "clone", "-q", str(machine_a), str(machine_b)], tmp_path, env)
        assert not (machine_b / "dvc.lock").exists() and not (machine_b / ".dvc" / "cache").exists()
        fetched = shared_cache(machine_b, "fetch", env)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        progress = tmp_path / "progress-b.txt"
        restored = run(["dvc", "repro", "--pull"], machine_b, clean_env(TOY_PROGRESS=str(progress), **S3_CREDENTIALS),
                       timeout=300)
        assert restored.stdout.count("is cached - skipping run") == 2, restored.stdout
        assert "Running stage" not in restored.stdout
        assert not progress.exists(), "the toy stage ran on machine B"
        for path in OUTPUTS:
            assert (machine_b / path).read_bytes() == (machine_a / path).read_bytes(), path
        assert json.loads((machine_b / "metrics/toy-2.json").read_text())["test"]["accuracy"] == 0.502
        assert run(["dvc", "status", "-q"], machine_b, env, check=False).returncode == 0
        # And a second repro has nothing left to do.
        again = run(["dvc", "repro"], machine_b, env)
        assert "Running stage" not in again.stdout and "is cached" not in again.stdout, again.stdout


@pytest.mark.slow
def test_remote_errors_are_named(tmp_path):
    root = make_toy_project(tmp_path / "toy")
    env = clean_env(**S3_CREDENTIALS)
    no_remote = shared_cache(root, "check", env)
    assert no_remote.returncode == 1 and "no DVC remote is configured: dvc remote add" in no_remote.stderr
    with s3_server("dvc-cache") as endpoint:
        run(["dvc", "remote", "add", "-d", "team", "s3://missing-bucket/x"], root, env)
        run(["dvc", "remote", "modify", "team", "endpointurl", endpoint], root, env)
        missing = shared_cache(root, "check", env)
        assert missing.returncode == 1 and "bucket 'missing-bucket' does not exist" in missing.stderr, missing.stderr
    gone = shared_cache(root, "check", env)  # the server is stopped now
    assert gone.returncode == 1 and f"the S3 endpoint {endpoint} does not answer" in gone.stderr, gone.stderr
