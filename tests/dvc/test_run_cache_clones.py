"""The shared run-cache restores across clones, the way a team uses it.

Two clones of the committed repository at different paths, bytecode written in both: a stage computed in one and
pushed (`scripts/shared_cache.py push`, a moto S3 server as the remote) is restored in the other by
`dvc repro --pull` without running: with the committed parameters through the committed lock, with a parameter
edit that no lock records through the run-cache. Before .dvcignore kept bytecode out of the code folders' hashes, the run-cache
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


def _edit_params(clone, old, new):
    params = clone / "params.yaml"
    text = params.read_text()
    assert text.count(old) == 1, old
    params.write_text(text.replace(old, new))


def _compute_and_push(clone, env):
    computed = run(["dvc", "repro", STAGE], clone, env, timeout=600)
    assert f"Running stage '{STAGE}'" in computed.stdout, computed.stdout
    run([sys.executable, str(SHARED_CACHE), "push"], clone, env, timeout=300)


def _fetch_and_restore(clone, env):
    run([sys.executable, str(SHARED_CACHE), "fetch"], clone, env, timeout=300)
    write_bytecode(clone, env)  # and once more after fetching: nothing it writes may matter
    restored = run(["dvc", "repro", "--pull", STAGE], clone, env, timeout=600)
    assert f"Running stage '{STAGE}'" not in restored.stdout, restored.stdout
    return restored.stdout


@pytest.mark.longest(seconds=140)
@pytest.mark.slow
def test_a_stage_pushed_from_one_clone_is_restored_in_another_without_running(tmp_path):
    with s3_server("dvc-cache") as endpoint:
        first = clone_repository(tmp_path / "alice" / "work" / "equitune")
        second = clone_repository(tmp_path / "bob" / "equitune-copy")
        first_env, second_env = user_env(first, **S3_CREDENTIALS), user_env(second, **S3_CREDENTIALS)
        for clone, env in ((first, first_env), (second, second_env)):
            write_bytecode(clone, env)
            _with_remote(clone, endpoint, env)

        # The committed parameters: the second clone's committed lock already names the outputs, it pulls them.
        _compute_and_push(first, first_env)
        _fetch_and_restore(second, second_env)
        assert _files(second / "data" / "scan") == _files(first / "data" / "scan")
        assert dvc_status(second, second_env, STAGE) == {}

        # A parameter neither lock knows (an experiment both make): only the run-cache can restore it.
        for clone in (first, second):
            _edit_params(clone, "validation_seed: 0", "validation_seed: 1")
        _compute_and_push(first, first_env)
        restored = _fetch_and_restore(second, second_env)
        assert f"Stage '{STAGE}' is cached - skipping run" in restored, restored
        assert _files(second / "data" / "scan") == _files(first / "data" / "scan")
        assert dvc_status(second, second_env, STAGE) == {}
