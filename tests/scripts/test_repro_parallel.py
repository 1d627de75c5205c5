"""scripts/repro.py: independent stages side by side in one checkout, with DVC's own locks.

A throw-away DVC project whose stages sleep, record when they ran (outside DVC's outputs) and write outputs that
depend only on their params and inputs: two independent stages overlap in time with -j 2 and not with -j 1, a stage
waits for the ones it depends on, the outputs and dvc.lock are those of a plain `dvc repro` of the same project, a
failure stops the run with the stage's own message, --keep-going runs what does not depend on it, and Ctrl-C stops
every running stage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers.paths import ROOT
from helpers.toy_project import clean_env, run, wait_for

pytestmark = pytest.mark.slow

RUNNER = ROOT / "scripts" / "repro.py"

STAGE_PY = """\
import json, os, sys, time
from pathlib import Path
import yaml
name = sys.argv[1]
settings = yaml.safe_load(Path("params.yaml").read_text())["stages"][name]
started = time.time()
print(f"{name}: working", flush=True)
Path("started").mkdir(exist_ok=True)
Path(f"started/{name}").write_text(str(os.getpid()))
time.sleep(settings["seconds"])
if settings.get("fail"):
    print(f"{name}: deliberate failure", file=sys.stderr, flush=True)
    sys.exit(3)
inputs = [Path(p).read_text() for p in sys.argv[2:]]
Path("out").mkdir(exist_ok=True)
Path(f"out/{name}.txt").write_text(json.dumps({"name": name, "value": settings["value"], "inputs": inputs}))
Path("ran").mkdir(exist_ok=True)
Path(f"ran/{name}.json").write_text(json.dumps([started, time.time()]))
"""

DVC_YAML = """\
stages:
  a1:
    cmd: python stage.py a1
    deps: [stage.py]
    params: [stages.a1]
    outs: [out/a1.txt]
  a2:
    cmd: python stage.py a2
    deps: [stage.py]
    params: [stages.a2]
    outs: [out/a2.txt]
  b:
    cmd: python stage.py b out/a1.txt out/a2.txt
    deps: [stage.py, out/a1.txt, out/a2.txt]
    params: [stages.b]
    outs: [out/b.txt]
  c:
    cmd: python stage.py c
    deps: [stage.py]
    params: [stages.c]
    outs: [out/c.txt]
"""


def make_project(root: Path, seconds: float = 3.0, **overrides: dict) -> Path:
    root.mkdir(parents=True)
    env = clean_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    (root / "stage.py").write_text(STAGE_PY)
    (root / "dvc.yaml").write_text(DVC_YAML)
    stages = {name: {"seconds": seconds, "value": i} for i, name in enumerate(("a1", "a2", "b", "c"))}
    stages["b"]["seconds"] = 0.5
    for name, settings in overrides.items():
        stages[name].update(settings)
    (root / "params.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / ".gitignore").write_text("started/\nran/\n")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "toy"], root, env)
    return root


def repro(root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), "--heartbeat", "1", *args], cwd=root, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def intervals(root: Path) -> dict[str, tuple[float, float]]:
    return {p.stem: tuple(json.loads(p.read_text())) for p in (root / "ran").glob("*.json")}


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def lock_entries(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def test_independent_stages_run_side_by_side_and_match_a_plain_dvc_repro(tmp_path):
    parallel = make_project(tmp_path / "parallel")
    result = repro(parallel, "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = intervals(parallel)
    assert set(ran) == {"a1", "a2", "b", "c"}
    independent = [ran["a1"], ran["a2"], ran["c"]]
    assert max(overlap(x, y) for i, x in enumerate(independent) for y in independent[i + 1:]) > 1.0, ran
    assert ran["b"][0] >= max(ran["a1"][1], ran["a2"][1]), "b started before the stages it depends on ended"
    assert "4 stage(s) ran" in result.stdout and "running 'a" in result.stdout  # the heartbeat names them
    assert run(["dvc", "status", "-q"], parallel, clean_env(), check=False).returncode == 0

    plain = make_project(tmp_path / "plain")
    run(["dvc", "repro"], plain, clean_env(), timeout=180)
    for name in ("a1", "a2", "b", "c"):
        assert (parallel / "out" / f"{name}.txt").read_bytes() == (plain / "out" / f"{name}.txt").read_bytes()
    assert lock_entries(parallel) == lock_entries(plain), "dvc.lock records the same stages, hashes and params"

    again = repro(parallel, "-j", "2")
    assert again.returncode == 0 and "all 4 stage(s) up to date" in again.stdout, again.stdout


def test_one_job_runs_one_stage_at_a_time_and_only_what_changed(tmp_path):
    root = make_project(tmp_path / "toy", seconds=1.0)
    result = repro(root, "-j", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = intervals(root)
    spans = sorted(ran.values())
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), ran

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["stages"]["a2"]["value"] = 7
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    dry = repro(root, "--dry")
    assert dry.returncode == 0 and dry.stdout.split("\n", 1)[1].split() == ["a2", "b"], dry.stdout
    result = repro(root, "-j", "2")
    assert result.returncode == 0 and "2 stage(s) ran" in result.stdout, result.stdout
    assert json.loads((root / "out" / "a2.txt").read_text())["value"] == 7
    assert '"value": 7' in json.loads((root / "out" / "b.txt").read_text())["inputs"][1]


def test_a_failure_stops_new_stages_and_shows_the_stage_message(tmp_path):
    root = make_project(tmp_path / "toy", seconds=2.0, a1={"fail": True, "seconds": 0.5})
    result = repro(root, "-j", "2")
    assert result.returncode == 1
    assert "FAILED  'a1'" in result.stdout and "a1: deliberate failure" in result.stdout  # the log's tail
    assert "failed: a1" in result.stdout
    assert not (root / "out" / "b.txt").exists()
    started = {p.name for p in (root / "started").iterdir()}
    assert "b" not in started and len(started) == 2, started  # a1 and the stage started beside it, no more

    root = make_project(tmp_path / "keep", seconds=1.0, a1={"fail": True, "seconds": 0.5})
    result = repro(root, "-j", "2", "--keep-going")
    assert result.returncode == 1
    assert set(intervals(root)) == {"a2", "c"}, "the stages independent of a1 ran; b, which needs a1, did not"


def test_targets_bring_their_upstream_and_unknown_names_are_refused(tmp_path):
    root = make_project(tmp_path / "toy", seconds=0.5)
    result = repro(root, "b", "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(intervals(root)) == {"a1", "a2", "b"}

    wrong = repro(root, "nope")
    assert wrong.returncode != 0 and "no stage named nope" in wrong.stderr + wrong.stdout
    assert "a1" in wrong.stderr + wrong.stdout  # the names that exist


def test_interrupt_stops_every_running_stage_even_when_started_with_sigint_ignored(tmp_path):
    root = make_project(tmp_path / "toy", seconds=60.0)
    # Started with SIGINT ignored, as a shell starts a background job (and pytest-xdist its workers' children).
    process = subprocess.Popen([sys.executable, str(RUNNER), "-j", "2"], cwd=root, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_for(lambda: (root / "started").exists() and len(list((root / "started").iterdir())) == 2, 60,
             what="two stages to start")
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 130, output
    assert time.monotonic() - started < 60, "the stages were stopped, not waited for"
    assert "interrupted: stopping" in output
    pids = [int(p.read_text()) for p in (root / "started").iterdir()]
    assert not [pid for pid in pids if alive(pid)], "a stage process outlived the run"
    assert not (root / "ran").exists()
