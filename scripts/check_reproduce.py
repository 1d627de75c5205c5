"""Check that the committed results reproduce: `dvc repro` in a fresh clone, then compare every metric.

1. Clone HEAD into a temporary folder (the committed code, params, dvc.lock and metrics; no DVC cache, so
   every stage really runs).
2. Run `dvc repro` there, then `dvc status`, which must report nothing stale.
3. Compare each metrics file tracked by git under metrics/ with the regenerated one, key by key, within the
   tolerances in reproduce.yaml. A metric missing from either side fails; so does a file that is missing.

Exit 0 when everything reproduces, 1 otherwise (the table of differences says which).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def flatten(data, prefix=""):
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}/"))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}/"))
        return out
    return {prefix.rstrip("/"): data}


def tolerance_for(file: str, key: str, config: dict) -> tuple[float, float] | None:
    """(abs, rel) for a metric, or None when the metric is excluded (reason given in reproduce.yaml)."""
    full = f"{file}:{key}"
    for rule in config.get("exclude", []):
        if fnmatch.fnmatch(full, rule["pattern"]):
            return None
    for rule in config.get("rules", []):
        if fnmatch.fnmatch(full, rule["pattern"]):
            return float(rule.get("abs", 0.0)), float(rule.get("rel", 0.0))
    default = config["default"]
    return float(default.get("abs", 0.0)), float(default.get("rel", 0.0))


def compare(committed: dict, regenerated: dict, file: str, config: dict) -> tuple[int, list[str]]:
    problems, compared = [], 0
    for key in sorted(set(committed) | set(regenerated)):
        tol = tolerance_for(file, key, config)
        if tol is None:
            continue
        if key not in regenerated:
            problems.append(f"{file}:{key}: missing from the regenerated metrics")
            continue
        if key not in committed:
            problems.append(f"{file}:{key}: produced now but not in the committed metrics (commit the new results)")
            continue
        old, new = committed[key], regenerated[key]
        compared += 1
        if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
            allowed = tol[0] + tol[1] * abs(old)
            if not (math.isfinite(new) and abs(new - old) <= allowed):
                problems.append(f"{file}:{key}: committed {old!r}, reproduced {new!r} (|diff| {abs(new - old):.3g} > {allowed:.3g})")
        elif old != new:
            problems.append(f"{file}:{key}: committed {old!r}, reproduced {new!r}")
    return compared, problems


def run(cmd: list[str], cwd: Path, env: dict) -> None:
    print(f"$ {' '.join(cmd)}   (in {cwd})", flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone for inspection")
    args = parser.parse_args()

    config = yaml.safe_load((ROOT / "reproduce.yaml").read_text())
    tracked = subprocess.run(["git", "ls-files", "metrics"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = [f for f in tracked if f.endswith(".json")]
    if not files:
        print("check_reproduce: no metrics files are committed under metrics/; nothing to reproduce", file=sys.stderr)
        return 1

    workdir = Path(tempfile.mkdtemp(prefix="equitune-reproduce-"))
    clone = workdir / "repo"
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(clone / "src"))
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone gets its own store
    env.pop("DVC_ROOT", None)
    ok = False
    try:
        run(["git", "clone", "--quiet", str(ROOT), str(clone)], workdir, env)
        run(["dvc", "config", "--local", "core.check_update", "false"], clone, env)
        started = time.monotonic()
        run(["dvc", "repro"], clone, env)
        print(f"check_reproduce: dvc repro took {time.monotonic() - started:.0f} s", flush=True)
        status = subprocess.run(["dvc", "status", "-q"], cwd=clone, env=env)
        problems = [] if status.returncode == 0 else ["`dvc status` reports stale stages after `dvc repro`"]
        compared = 0
        for file in files:
            committed = flatten(json.loads(subprocess.run(["git", "show", f"HEAD:{file}"], cwd=ROOT, capture_output=True,
                                                          text=True, check=True).stdout))
            path = clone / file
            if not path.exists():
                problems.append(f"{file}: not produced by dvc repro")
                continue
            n, found = compare(committed, flatten(json.loads(path.read_text())), file, config)
            compared += n
            problems += found
        print(f"check_reproduce: compared {compared} metrics in {len(files)} files")
        for line in problems:
            print(f"  FAIL {line}")
        ok = not problems
        print("check_reproduce: results reproduce" if ok else f"check_reproduce: {len(problems)} problem(s)")
    finally:
        if args.keep or not ok:
            print(f"check_reproduce: clone kept at {clone}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
