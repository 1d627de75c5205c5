"""Check that the committed results reproduce: `dvc repro` in a fresh clone, then compare by reproduce.yaml's rules.

What "reproduces" means here (docs/testing.md, "What reproduces means"): the paper's claims hold and the headline aggregates
agree within their statistical band on any machine; the exact digits are compared too when the machine's CPU
kernels and libraries match the ones recorded with the committed results (pinned by ``base.cpu_isa``).

1. Clone HEAD into a temporary folder: the committed code, params, dvc.lock and metrics; no DVC cache and no
   run-cache, so nothing can be restored instead of computed.
2. Delete the committed metrics files in the clone (so a file that no stage writes any more cannot pass by
   being compared with itself), then `scripts/repro.py --force` (`dvc repro --force` with independent stages side
   by side, one per core unless ``--jobs`` says otherwise: every stage runs, even one whose committed outputs
   match dvc.lock), then `dvc status`, which must report nothing stale. The committed results were made one stage
   at a time or side by side; the exact-digit comparison below holds either way, which is what shows that running
   stages side by side changes no result.
   The clone's own code runs: PYTHONPATH=<clone>/src puts its `equitune` package ahead of any installed one
   (checked before anything runs). ``--cpu-isa X`` runs every stage with ``EQUITUNE_CPU_ISA=X`` (e.g. ``baseline``:
   a lower instruction set than the committed run's, to check the statistical path on one machine).
3. Compare the regenerated metrics with the committed ones (scripts/reproduce_rules.py, rules in reproduce.yaml):
   structure (a missing or an uncommitted metric fails), the environment record, the exact digits (only when the
   environment matches; otherwise the mismatch is reported, not failed), the aggregates over seeds, the claims.
   ``--reproduced DIR`` compares with the metrics/ of a run already made in DIR (e.g. a clone kept by ``--keep``)
   instead of steps 1-2.

Exit 0 when everything reproduces, 1 otherwise (the list of problems says which).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_rules as rules  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS_DIR = "metrics"
CPU_ISA_VARIABLE = "EQUITUNE_CPU_ISA"  # equitune.pipeline.reproducibility.OVERRIDE_VARIABLE (not imported: the
CPU_ISA_CHOICES = ("avx2", "avx512", "baseline", "native")  # check must run with any checkout's package)


def load_config(path: Path) -> rules.ReproduceConfig:
    try:
        return rules.ReproduceConfig.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as error:
        raise SystemExit(f"check_reproduce: {path} is invalid:\n{error}") from None


# ----- the two trees ----------------------------------------------------------------------------------------------

def committed_metrics(repo: Path) -> dict[str, dict]:
    """The metrics JSON files in HEAD (not the index or the working tree) and their contents."""
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", "--", METRICS_DIR], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    return {name: json.loads(subprocess.run(["git", "show", f"HEAD:{name}"], cwd=repo, capture_output=True,
                                            text=True, check=True).stdout)
            for name in names if name.endswith(".json")}


def produced_metrics(root: Path) -> dict[str, dict]:
    folder = root / METRICS_DIR
    return {p.relative_to(root).as_posix(): json.loads(p.read_text())
            for p in sorted(folder.rglob("*.json"))} if folder.exists() else {}


# ----- comparing --------------------------------------------------------------------------------------------------

def compare(committed: dict[str, dict], reproduced: dict[str, dict], config: rules.ReproduceConfig) -> list[str]:
    """Run every comparison, print what was compared; returns the problems (empty: the results reproduce)."""
    record = config.environment.record
    old_tree = {file: rules.flatten(data) for file, data in committed.items()}
    new_tree = {file: rules.flatten(data) for file, data in reproduced.items()}
    problems = rules.compare_structure(old_tree, new_tree)

    differences = rules.compare_environment(committed.get(record), reproduced.get(record), config.environment)
    old_results = {f: v for f, v in old_tree.items() if f != record}
    new_results = {f: v for f, v in new_tree.items() if f != record}
    values = sum(len(v) for v in old_results.values())
    if differences:
        print(f"environment: differs from the committed run; exact digits not compared ({values} values):")
        for line in differences:
            print(f"  {line}")
    else:
        compared, found, skipped = rules.compare_exact(old_results, new_results, config.exact)
        print(f"environment: matches the committed run ({', '.join(config.environment.match)}); "
              f"exact digits: {compared} values compared, {len(found)} outside tolerance")
        for line in skipped:
            print(f"  skip {line}")
        problems += found

    rows, found = rules.compare_aggregates(config.aggregates, old_results, new_results)
    by_set = defaultdict(list)
    for row in rows:
        by_set[row.set].append(row)
    print(f"aggregates: {len(rows)} means over seeds compared (band: z = {config.aggregates.z:g} standard errors "
          "of the difference, see reproduce.yaml)")
    for name, set_rows in by_set.items():
        print(f"  {name}: {sum(r.ok for r in set_rows)}/{len(set_rows)} within band")
        for row in set_rows:
            print(f"    {'ok  ' if row.ok else 'FAIL'} {row.describe()}")
    problems += found

    for label, tree in (("committed", old_results), ("reproduced", new_results)):
        verdicts = rules.check_claims(config.claims, tree)
        print(f"claims on the {label} results: {sum(ok for _, ok, _ in verdicts)}/{len(verdicts)} hold")
        for claim, ok, detail in verdicts:
            print(f"  {'ok  ' if ok else 'FAIL'} {claim.claim}: {detail}")
            if not ok:
                problems.append(f"claim does not hold on the {label} results: {claim.claim}: {detail}")
    return problems


def report(problems: list[str]) -> int:
    for line in problems:
        print(f"  FAIL {line}")
    print("check_reproduce: results reproduce" if not problems else f"check_reproduce: {len(problems)} problem(s)")
    return 0 if not problems else 1


# ----- the fresh clone --------------------------------------------------------------------------------------------

def clone_environment(clone: Path, cpu_isa: str | None = None) -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(clone / "src"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # The clone gets its own store; an inherited DVC_ROOT would even be kept by dvc for every stage.
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        env.pop(name, None)
    if cpu_isa is not None:
        env[CPU_ISA_VARIABLE] = cpu_isa
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


def reproduce(repo: Path, keep: bool, cpu_isa: str | None, jobs: int | None = None) -> int:
    config = load_config(repo / "reproduce.yaml")
    committed = committed_metrics(repo)
    if not committed:
        print(f"check_reproduce: no metrics files are committed under {METRICS_DIR}/; nothing to reproduce",
              file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="equitune-reproduce-"))
    clone = workdir / "repo"
    env = clone_environment(clone, cpu_isa)
    jobs_option = [] if jobs is None else ["--jobs", str(jobs)]
    ok = False
    try:
        run(["git", "clone", "--quiet", str(repo), str(clone)], workdir, env)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
        forced = f", every stage with {CPU_ISA_VARIABLE}={cpu_isa}" if cpu_isa else ""
        print(f"check_reproduce: commit {head}, {len(committed)} committed metrics files{forced}", flush=True)
        profile = (yaml.safe_load((clone / "params.yaml").read_text()) or {}).get("profile", "default")
        if profile != "default":
            raise SystemExit(f"check_reproduce: the committed params.yaml is the {profile!r} profile; "
                             "commit the default profile (`git checkout params.yaml` after `make paper`)")
        check_clone_code_wins(clone, env)
        run(["dvc", "config", "--local", "core.check_update", "false"], clone, env)
        for file in committed:
            (clone / file).unlink(missing_ok=True)
        started = time.monotonic()
        run([sys.executable, str(Path(__file__).resolve().parent / "repro.py"), "--force", *jobs_option], clone, env)
        print(f"check_reproduce: dvc repro took {time.monotonic() - started:.0f} s", flush=True)
        status = subprocess.run(["dvc", "status", "-q"], cwd=clone, env=env)
        problems = [] if status.returncode == 0 else ["`dvc status` reports stale stages after `dvc repro`"]
        problems += compare(committed, produced_metrics(clone), config)
        ok = report(problems) == 0
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
    parser.add_argument("--cpu-isa", choices=CPU_ISA_CHOICES,
                        help=f"run every stage of the clone with {CPU_ISA_VARIABLE}=this (default: base.cpu_isa)")
    parser.add_argument("-j", "--jobs", type=int,
                        help="stages side by side (scripts/repro.py; default: one per core this process may use)")
    parser.add_argument("--reproduced", type=Path, metavar="DIR",
                        help="compare with DIR/metrics (a run already made) instead of cloning and running")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    if args.reproduced is not None:
        config = load_config(repo / "reproduce.yaml")
        print(f"check_reproduce: comparing the committed metrics of {repo} with {args.reproduced / METRICS_DIR}")
        return report(compare(committed_metrics(repo), produced_metrics(args.reproduced.resolve()), config))
    return reproduce(repo, args.keep, args.cpu_isa, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
