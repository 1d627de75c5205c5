"""The shared run-cache restores across clones, the way a team uses it.

Two clones of the committed repository at different paths, bytecode written in both: a stage computed in one and
pushed (`scripts/shared_cache.py push`, a moto S3 server as the remote) is restored in the other by
`dvc repro --pull` without running. Before .dvcignore kept bytecode out of the code folders' hashes, the run-cache
key (the deps' hashes) differed between any two clones that had written bytecode, and the stage reran.
"""

from __future__ import annotations

import sys

import pytest

from helpers.clones import clone_repository, dvc_status, user_env, write_bytecode
from helpers.paths import ROOT
from helpers.servers import S3_CREDENTIALS, s3_server
from helpers.toy_project import run

SHARED_CACHE = ROOT / "scripts" / "shared_cache.py"
STAGE = "scan_prepare"


def _with_remote(clone, endpoint, env):
    run(["dvc", "remote", "add", "--local", "-d", "team", "s3://dvc-cache/equitune"], clone, env)
    run(["dvc", "remote", "modify", "--local", "team", "endpointurl", endpoint], clone, env)


def _files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_a_stage_pushed_from_one_clone_is_restored_in_another_without_running(tmp_path):
    with s3_server("dvc-cache") as endpoint:
        first = clone_repository(tmp_path / "alice" / "work" / "equitune")
        second = clone_repository(tmp_path / "bob" / "equitune-copy")
        first_env, second_env = user_env(first, **S3_CREDENTIALS), user_env(second, **S3_CREDENTIALS)
        for clone, env in ((first, first_env), (second, second_env)):
            write_bytecode(clone, env)
            _with_remote(clone, endpoint, env)

        computed = run(["dvc", "repro", STAGE], first, first_env, timeout=600)
        assert f"Running stage '{STAGE}'" in computed.stdout, computed.stdout
        run([sys.executable, str(SHARED_CACHE), "push"], first, first_env, timeout=300)

        run([sys.executable, str(SHARED_CACHE), "fetch"], second, second_env, timeout=300)
        write_bytecode(second, second_env)  # and once more after fetching: nothing it writes may matter
        restored = run(["dvc", "repro", "--pull", STAGE], second, second_env, timeout=600)
        assert f"Stage '{STAGE}' is cached - skipping run" in restored.stdout, restored.stdout
        assert f"Running stage '{STAGE}'" not in restored.stdout, restored.stdout
        assert _files(second / "data" / "scan") == _files(first / "data" / "scan")
        assert dvc_status(second, second_env, STAGE) == {}
