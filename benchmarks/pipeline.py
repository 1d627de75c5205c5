"""Benchmark 5: wall time of a cold ``dvc repro`` of the default profile, stage by stage, and of a no-op one.

Cold: by default a fresh ``git clone`` of HEAD into a temporary folder (no DVC cache, no run-cache, so every
stage really runs; commit first, uncommitted work is not in the clone), then ``dvc repro`` there; ``--in-place``
runs ``dvc repro --force`` in the given repository instead (that takes its repo lock and rewrites its outputs).
No-op: ``dvc repro`` again right after, when nothing changed: the cost of DVC checking hashes.

Per-stage times come from dvc's own output, timestamped line by line as it arrives: a stage runs from its
"Running stage 'name':" line to the lock-file update that follows it. Stages "restored from run-cache" or
"didn't change" are listed with their status.

    python benchmarks/pipeline.py                       # the lead runs this once, on an idle machine
    python benchmarks/pipeline.py --repo TOY --in-place # what the smoke test does on a toy DVC project
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timing

RUNNING = re.compile(r"^Running stage '([^']+)'")
RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run, checking out outputs|^Restored stage '([^']+)'")
UNCHANGED = re.compile(r"^Stage '([^']+)' didn't change, skipping")
LOCK = re.compile(r"^(Updating|Generating) lock file")


def parse_stage_times(events: list[tuple[float, str]], end: float) -> list[dict]:
    """Stages in the order dvc reported them, from ``(seconds since start, line)`` pairs.

    A running stage ends at the first lock-file line after its start (dvc writes the lock after each stage),
    or else at the next stage's start, or else at ``end``.
    """
    stages, current = [], None

    def close(at: float) -> None:
        nonlocal current
        if current is not None:
            current["seconds"] = round(at - current.pop("_start"), 3)
            stages.append(current)
            current = None

    for at, raw in events:
        line = raw.strip()
        if match := RUNNING.match(line):
            close(at)
            current = {"stage": match.group(1), "status": "ran", "_start": at}
        elif LOCK.match(line):
            close(at)
        elif match := RESTORED.match(line):
            close(at)
            stages.append({"stage": match.group(1) or match.group(2), "status": "restored from run-cache", "seconds": 0.0})
        elif match := UNCHANGED.match(line):
            close(at)
            stages.append({"stage": match.group(1), "status": "unchanged", "seconds": 0.0})
    close(end)
    return stages


def run_timed(command: list[str], cwd: Path, env: dict) -> tuple[float, list[tuple[float, str]]]:
    """Run ``command``, echo and timestamp each output line; total seconds and the events. Fails on non-zero exit."""
    print(f"$ {' '.join(command)}   (in {cwd})", flush=True)
    start = time.monotonic()
    events = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        for line in process.stdout:
            events.append((time.monotonic() - start, line))
            sys.stdout.write(line)
        process.wait()
    total = time.monotonic() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode} after {total:.0f} s")
    return total, events


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(timing.ROOT), help="the DVC project (default: this checkout)")
    parser.add_argument("--in-place", action="store_true", help="dvc repro --force in --repo instead of a fresh clone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    if not (repo / "dvc.yaml").exists():
        raise SystemExit(f"{repo} has no dvc.yaml; --repo must be a DVC project")
    if shutil.which("dvc") is None:
        raise SystemExit("dvc not found on PATH (activate the project's virtual environment)")

    # Unbuffered, so that each line reaches us (and gets its timestamp) when it is printed.
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.pop("DVC_ROOT", None)
    workdir = None
    if args.in_place:
        project, cold_command = repo, ["dvc", "repro", "--force"]
    else:
        workdir = Path(tempfile.mkdtemp(prefix="equitune-pipeline-bench-"))
        project, cold_command = workdir / "repo", ["dvc", "repro"]
        env.pop("MLFLOW_TRACKING_URI", None)  # the clone gets its own store
        env["PYTHONPATH"] = str(project / "src")
        subprocess.run(["git", "clone", "--quiet", str(repo), str(project)], check=True)
        subprocess.run(["dvc", "config", "--local", "core.check_update", "false"], cwd=project, env=env, check=True)
    try:
        cold_total, cold_events = run_timed(cold_command, project, env)
        noop_total, noop_events = run_timed(["dvc", "repro"], project, env)
    finally:
        if workdir is not None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir is not None:
            print(f"clone kept at {project}")

    stages = parse_stage_times(cold_events, cold_total)
    ran = [s for s in stages if s["status"] == "ran"]
    print(f"\ncold dvc repro: {cold_total:.1f} s, {len(ran)} stage(s) ran")
    for s in sorted(stages, key=lambda s: -s["seconds"]):
        print(f"  {s['stage']:40s} {s['seconds']:9.1f} s  {s['status']}")
    print(f"no-op dvc repro: {noop_total:.1f} s ({len(parse_stage_times(noop_events, noop_total))} stage line(s))")
    rows = [{"row_id": f"stage/{s['stage']}", "kind": "stage", **s} for s in stages]
    rows += [{"row_id": "total/cold", "kind": "total", "seconds": round(cold_total, 2), "stages_ran": len(ran),
              "mode": "in-place --force" if args.in_place else "fresh clone"},
             {"row_id": "total/noop", "kind": "total", "seconds": round(noop_total, 2)}]
    path = timing.record("pipeline", args, rows)
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("no-op/cold dvc repro wall time", noop_total / cold_total, "small; cold <= 25 min"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
