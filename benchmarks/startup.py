"""Benchmark 14: what a stage pays before it does any work: interpreter, imports, and DVC around it.

Every DVC stage is a fresh process (`dvc repro --single-item STAGE` around `python pipelines/<...>.py`), so its
fixed cost is paid once per stage: 76 times in the default profile, 50 in the paper smoke run. Measured here, each
in a fresh interpreter, round-robin over ``--repeats`` rounds (so machine load hits every item alike), median:

- ``python -c pass``: the interpreter alone (the baseline the other rows are shown against);
- ``import X`` for the heavy libraries a stage may load: torch, torchvision, mlflow, transformers, e2cnn,
  efficientnet_lite_pytorch;
- deterministic kernels, which every stage turns on: ``torch.use_deterministic_algorithms(True)`` (it imports
  ``torch._inductor`` to set inductor's flag too) against ``equitune.pipeline.seeding.seed_everything`` (the same
  flags without that import while nothing compiles), both after ``import torch``;
- each stage script with ``--help``: its module-level imports (what it pays before parsing its arguments);
- DVC around a stage: ``dvc repro --single-item --force params_check`` in a scratch clone versus the same command
  run directly; the difference is DVC's own cost per stage (start-up, reading dvc.yaml's matrices, hashing the
  stage's deps and outputs, rewriting dvc.lock).

    python benchmarks/startup.py               # a few minutes
    python benchmarks/startup.py --quick       # smoke test: the interpreter, torch and one script, once
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import timing

LIBRARIES = ("torch", "torchvision", "mlflow", "transformers", "e2cnn", "efficientnet_lite_pytorch")


def _seconds(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    return timing.time_once(lambda: subprocess.run(command, cwd=cwd, env=env, check=True,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def _items(quick: bool) -> dict[str, list[str]]:
    python = sys.executable
    items = {"python -c pass": [python, "-c", "pass"]}
    for library in LIBRARIES[:1] if quick else LIBRARIES:
        items[f"import {library}"] = [python, "-c", f"import {library}"]
    if not quick:
        items["import torch; use_deterministic_algorithms"] = [
            python, "-c", "import torch; torch.use_deterministic_algorithms(True)"]
        items["import torch; seed_everything"] = [
            python, "-c", "import torch; from equitune.pipeline.seeding import seed_everything; seed_everything(0)"]
    scripts = sorted((timing.ROOT / "pipelines").rglob("*.py"))
    for script in scripts[:1] if quick else scripts:
        items[f"{script.relative_to(timing.ROOT)} --help"] = [python, str(script), "--help"]
    return items


def _dvc_overhead(repeats: int, env: dict[str, str]) -> dict:
    """``dvc repro --single-item --force params_check`` versus its command alone, in a scratch clone of HEAD."""
    scratch = Path(tempfile.mkdtemp(prefix="startup_bench_"))
    try:
        clone = scratch / "clone"
        subprocess.run(["git", "clone", "-q", str(timing.ROOT), str(clone)], check=True)
        via_dvc = ["dvc", "repro", "--single-item", "--force", "params_check"]
        direct = [sys.executable, "pipelines/params_check.py", "--out", "params.checked"]
        comparison = timing.compare(lambda: _seconds(via_dvc, clone, env), lambda: _seconds(direct, clone, env),
                                    repeats=repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"row_id": "dvc:params_check", "what": "dvc repro --single-item params_check vs its command alone",
            "seconds": round(comparison.a_seconds, 3), "direct_seconds": round(comparison.b_seconds, 3),
            "over_baseline_s": round(comparison.a_seconds - comparison.b_seconds, 3),
            "ratio": round(comparison.ratio, 3)}


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-dvc", action="store_true", help="skip the DVC comparison (it needs git and dvc)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    # The stages' environment (Makefile): no analytics or telemetry calls, and the project's package first.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(timing.ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    items = _items(args.quick)
    times: dict[str, list[float]] = {name: [] for name in items}
    for command in items.values():  # warm-up: the page cache holds every file before timing
        _seconds(command, timing.ROOT, env)
    for _ in range(repeats):
        for name, command in items.items():
            times[name].append(_seconds(command, timing.ROOT, env))
    baseline = statistics.median(times["python -c pass"])
    rows = []
    for name, measured in times.items():
        seconds = statistics.median(measured)
        rows.append({"row_id": name, "what": name, "seconds": round(seconds, 3),
                     "over_baseline_s": round(seconds - baseline, 3), "repeats": repeats})
        print(f"{seconds:7.3f} s  (+{seconds - baseline:6.3f})  {name}")
    if not args.no_dvc and not args.quick:
        row = _dvc_overhead(repeats, env)
        rows.append(row)
        print(f"{row['seconds']:7.3f} s  (+{row['over_baseline_s']:6.3f} over the command alone)  {row['what']}")
    path = timing.record("startup", args, rows)
    if path:
        print(f"wrote {path}")
    if "import torch; seed_everything" in times:
        public = statistics.median(times["import torch; use_deterministic_algorithms"])
        ours = statistics.median(times["import torch; seed_everything"])
        print(timing.fmt_ratio_line("use_deterministic_algorithms / seed_everything", public / ours, "none"))
    torch_import = statistics.median(times["import torch"])
    print(timing.fmt_ratio_line("import torch / python -c pass", torch_import / baseline, "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
