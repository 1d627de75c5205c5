"""Check that the committed results reproduce: `dvc repro` in a fresh clone, then compare every metric.

1. Clone HEAD into a temporary folder: the committed code, params, dvc.lock and metrics; no DVC cache and no
   run-cache, so nothing can be restored instead of computed.
2. Delete the committed metrics files in the clone (so a file that no stage writes any more cannot pass by
   being compared with itself), then `dvc repro --force` (every stage runs, even one whose committed outputs
   match dvc.lock), then `dvc status`, which must report nothing stale.
   The clone's own code runs: PYTHONPATH=<clone>/src puts its `equitune` package ahead of any installed one
   (checked before anything runs).
3. Compare each metrics file committed under metrics/ with the regenerated one, key by key (nested keys joined
   with "/"), within the tolerances in reproduce.yaml. Fails: a metric missing from either side, a value
   outside tolerance, a committed file not produced, a produced file not committed.

Exit 0 when everything reproduces, 1 otherwise (the list of problems says which).
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ROOT = Path(__file__).resolve().parents[1]
METRICS_DIR = "metrics"


# ----- reproduce.yaml -------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0)


class Rule(Tolerance):
    pattern: str


class Exclusion(_Strict):
    pattern: str
    reason: str = Field(min_length=1, description="why this metric cannot be compared (shown in the output)")


class Tolerances(_Strict):
    default: Tolerance
    rules: list[Rule] = []
    exclude: list[Exclusion] = []


def load_tolerances(path: Path) -> Tolerances:
    try:
        return Tolerances.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as error:
        raise SystemExit(f"check_reproduce: {path} is invalid:\n{error}") from None


def tolerance_for(name: str, tolerances: Tolerances) -> Tolerance | Exclusion:
    """The first exclusion, else the first rule, else the default whose pattern matches "<file>:<key>"."""
    for exclusion in tolerances.exclude:
        if fnmatch.fnmatchcase(name, exclusion.pattern):
            return exclusion
    for rule in tolerances.rules:
        if fnmatch.fnmatchcase(name, rule.pattern):
            return rule
    return tolerances.default


# ----- comparison -----------------------------------------------------------------------------------------------

def flatten(data, prefix: str = "") -> dict:
    """Nested dicts and lists to {"a/b/0": leaf}: the names tracking.py gives the same metrics in MLflow."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix.rstrip("/"): data}
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}/"))
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_values(old, new, tolerance: Tolerance) -> str | None:
    """None when ``new`` reproduces ``old``; else why not. Numbers within abs + rel*|old|; anything else equal."""
    if _is_number(old) and _is_number(new):
        if old == new or (math.isnan(old) and math.isnan(new)):
            return None
        allowed = tolerance.abs + tolerance.rel * abs(old)
        if math.isfinite(old) and math.isfinite(new) and abs(new - old) <= allowed:
            return None
        return f"committed {old!r}, reproduced {new!r} (|diff| {abs(new - old):.3g} > allowed {allowed:.3g})"
    if type(old) is not type(new) or old != new:
        return f"committed {old!r}, reproduced {new!r}"
    return None


def compare_metrics(committed: dict, regenerated: dict, file: str, tolerances: Tolerances) -> tuple[int, list[str]]:
    """(number of metrics compared, problems) for one metrics file, both sides already flattened."""
    problems, compared = [], 0
    for key in sorted(set(committed) | set(regenerated)):
        name = f"{file}:{key}"
        rule = tolerance_for(name, tolerances)
        if isinstance(rule, Exclusion):
            print(f"  skip {name}: {rule.reason}")
            continue
        if key not in regenerated:
            problems.append(f"{name}: missing from the regenerated metrics")
        elif key not in committed:
            problems.append(f"{name}: produced now but not in the committed metrics (commit the new results)")
        else:
            compared += 1
            why = compare_values(committed[key], regenerated[key], rule)
            if why:
                problems.append(f"{name}: {why}")
    return compared, problems


def compare_trees(committed_files: dict[str, dict], clone: Path, tolerances: Tolerances) -> tuple[int, list[str]]:
    """Compare every committed metrics file with the one regenerated in ``clone``; also flag uncommitted ones."""
    problems, compared = [], 0
    for file, committed in sorted(committed_files.items()):
        path = clone / file
        if not path.exists():
            problems.append(f"{file}: not produced by dvc repro")
            continue
        n, found = compare_metrics(flatten(committed), flatten(json.loads(path.read_text())), file, tolerances)
        compared += n
        problems += found
    produced = {p.relative_to(clone).as_posix() for p in (clone / METRICS_DIR).rglob("*.json")} \
        if (clone / METRICS_DIR).exists() else set()
    for file in sorted(produced - set(committed_files)):
        problems.append(f"{file}: produced by dvc repro but not committed")
    return compared, problems


# ----- the fresh clone ------------------------------------------------------------------------------------------

def committed_metrics(repo: Path) -> dict[str, dict]:
    """The metrics JSON files in HEAD (not the index or the working tree) and their contents."""
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", "--", METRICS_DIR], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    return {name: json.loads(subprocess.run(["git", "show", f"HEAD:{name}"], cwd=repo, capture_output=True,
                                            text=True, check=True).stdout)
            for name in names if name.endswith(".json")}


def clone_environment(clone: Path) -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(clone / "src"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # The clone gets its own store; an inherited DVC_ROOT would even be kept by dvc for every stage.
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        env.pop(name, None)
    return env


def check_clone_code_wins(clone: Path, env: dict[str, str]) -> None:
    """`import equitune` in the clone's environment must load the clone's package, not an editable install."""
    if not (clone / "src" / "equitune").is_dir():
        return
    loaded = subprocess.run([sys.executable, "-c", "import equitune; print(equitune.__file__)"], cwd=clone, env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    if not Path(loaded).resolve().is_relative_to((clone / "src").resolve()):
        raise SystemExit(f"check_reproduce: the clone would run {loaded}, not its own code under {clone / 'src'}")


def run(cmd: list[str], cwd: Path, env: dict) -> None:
    print(f"$ {' '.join(cmd)}   (in {cwd})", flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def reproduce(repo: Path, keep: bool) -> int:
    tolerances = load_tolerances(repo / "reproduce.yaml")
    committed = committed_metrics(repo)
    if not committed:
        print(f"check_reproduce: no metrics files are committed under {METRICS_DIR}/; nothing to reproduce",
              file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="equitune-reproduce-"))
    clone = workdir / "repo"
    env = clone_environment(clone)
    ok = False
    try:
        run(["git", "clone", "--quiet", str(repo), str(clone)], workdir, env)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
        print(f"check_reproduce: commit {head}, {len(committed)} committed metrics files", flush=True)
        profile = (yaml.safe_load((clone / "params.yaml").read_text()) or {}).get("profile", "default")
        if profile != "default":
            raise SystemExit(f"check_reproduce: the committed params.yaml is the {profile!r} profile; "
                             "commit the default profile (`git checkout params.yaml` after `make paper`)")
        check_clone_code_wins(clone, env)
        run(["dvc", "config", "--local", "core.check_update", "false"], clone, env)
        for file in committed:
            (clone / file).unlink(missing_ok=True)
        started = time.monotonic()
        run(["dvc", "repro", "--force"], clone, env)
        print(f"check_reproduce: dvc repro took {time.monotonic() - started:.0f} s", flush=True)
        status = subprocess.run(["dvc", "status", "-q"], cwd=clone, env=env)
        problems = [] if status.returncode == 0 else ["`dvc status` reports stale stages after `dvc repro`"]
        compared, found = compare_trees(committed, clone, tolerances)
        problems += found
        print(f"check_reproduce: compared {compared} metrics in {len(committed)} files")
        for line in problems:
            print(f"  FAIL {line}")
        ok = not problems
        print("check_reproduce: results reproduce" if ok else f"check_reproduce: {len(problems)} problem(s)")
    finally:
        if keep or not ok:
            print(f"check_reproduce: clone kept at {clone}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone for inspection")
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to check (default: this one)")
    args = parser.parse_args(argv)
    return reproduce(args.repo.resolve(), args.keep)


if __name__ == "__main__":
    sys.exit(main())
