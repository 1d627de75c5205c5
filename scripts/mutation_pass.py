"""Mutation pass: apply each realistic single-point bug of scripts/mutants.yaml, one at a time, and see whether the
fast test suite notices.

The repository (without .git) is copied once to a temporary folder; each mutant edits one file of that copy, runs
the fast tests (``-m "not slow" -x``) of the test folders of the mutated package with that copy first on the
import path, and restores the file. A mutant is *caught* when pytest fails (exit status 1), *survives* when it
passes, and anything else (collection error, timeout, an internal error) is recorded as such.

Only the tests of the mutated package run (plus any listed in the mutant's ``tests``), so a bug caught only by
another package's tests counts as a survivor: the rate is a lower bound for the whole fast suite.

Usage (from the repository root):

    python scripts/mutation_pass.py --label after                 # the working tree
    python scripts/mutation_pass.py --label before --rev <commit>  # a committed tree (git archive)
    python scripts/mutation_pass.py --check            # every original snippet occurs exactly once
    python scripts/mutation_pass.py --only scan-select-on-test --label try

Writes ``benchmarks/results/mutation_<label>.json`` (one row per mutant: outcome, the first failing test, seconds)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "scripts" / "mutants.yaml"
RESULTS = ROOT / "benchmarks" / "results"

DEFAULT_TESTS = {
    "core": ["tests/core"],
    "scan": ["tests/scan"],
    "images": ["tests/images"],
    "nlg": ["tests/nlg"],
    "pipeline": ["tests/dvc/test_atomic.py", "tests/pipeline/test_curves.py", "tests/pipeline/test_schema.py",
                 "tests/pipeline/test_params.py", "tests/pipeline/test_right_answers_bounds.py",
                 "tests/pipeline/test_seeding.py"],
}
"""Package of the mutated file -> the test paths run for it (new right-answer tests live in the same folders)."""

CONFIG_EXTRA = ["tests/pipeline/test_params.py", "tests/pipeline/test_schema.py",
                "tests/pipeline/test_right_answers_bounds.py"]
"""Schema bounds of an experiment's config are also tested with the whole params file."""


def load_mutants(path: Path = MUTANTS) -> list[dict]:
    mutants = yaml.safe_load(path.read_text())["mutants"]
    ids = [m["id"] for m in mutants]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise SystemExit(f"{path}: duplicated mutant ids {duplicated}")
    return mutants


def tests_for(mutant: dict) -> list[str]:
    if mutant.get("tests"):
        return list(mutant["tests"])
    package = mutant["file"].split("/", 1)[0]
    paths = list(DEFAULT_TESTS[package])
    if mutant["file"].endswith("/config.py"):
        paths += [p for p in CONFIG_EXTRA if p not in paths]
    return paths


def check(mutants: list[dict], root: Path) -> list[str]:
    problems = []
    for m in mutants:
        text = (root / "src" / "equitune" / m["file"]).read_text()
        count = text.count(m["original"])
        if count != 1:
            problems.append(f"{m['id']}: original occurs {count} times in {m['file']}")
        if m["original"] == m["replacement"]:
            problems.append(f"{m['id']}: replacement equals the original")
    return problems


def _ignored(folder: str, names: list[str]) -> set[str]:
    skipped = {".git", "__pycache__", ".venv", ".pytest_cache"}
    here = Path(folder).resolve()
    if here == ROOT:
        skipped |= {"data"}
    if here == ROOT / ".dvc":
        skipped |= {"cache", "tmp"}
    return skipped & set(names)


def _first_failure(output: str) -> str:
    for pattern in (r"^FAILED (\S+)", r"^ERROR (\S+)"):
        found = re.search(pattern, output, re.MULTILINE)
        if found:
            return found.group(1)
    return ""


def run_tests(paths: list[str], copy: Path, timeout: float, python: str) -> tuple[int | None, str]:
    """Fast tests of ``paths`` on the copy (its code first on the import path): (exit status or None, output)."""
    env = {**os.environ, "PYTHONPATH": f"{copy / 'src'}{os.pathsep}{copy}", "PYTHONDONTWRITEBYTECODE": "1",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_WAIT_POLICY": "PASSIVE"}
    paths = [p for p in paths if (copy / p).exists()]  # a revision before a test file was added runs without it
    command = [python, "-m", "pytest", *paths, "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
               "-rf", "--timeout", str(int(timeout))]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout + 30)
        return done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        return None, "timeout"


def run_mutant(mutant: dict, copy: Path, timeout: float, python: str) -> dict:
    target = copy / "src" / "equitune" / mutant["file"]
    original = target.read_text()
    target.write_text(original.replace(mutant["original"], mutant["replacement"], 1))
    start = time.monotonic()
    try:
        code, output = run_tests(tests_for(mutant), copy, timeout, python)
    finally:
        target.write_text(original)
    seconds = round(time.monotonic() - start, 1)
    outcome = {0: "survived", 1: "caught"}.get(code, "timeout" if code is None else f"error (exit {code})")
    return {"id": mutant["id"], "file": mutant["file"], "category": mutant["category"],
            "description": mutant["description"], "outcome": outcome, "caught_by": _first_failure(output),
            "tests": tests_for(mutant), "seconds": seconds,
            **({"output_tail": output[-1500:]} if outcome not in ("caught", "survived") else {})}


def markdown(summary: dict) -> str:
    """The result file as a table: one row per mutant, what caught it or that it survived."""
    lines = [f"# Mutation pass `{summary['label']}` ({summary.get('rev', 'working tree')})", "",
             f"{summary['caught']}/{summary['mutants']} mutants caught ({summary['rate']:.0%}) by the fast tests of "
             "the mutated package (a lower bound for the whole fast suite).", "",
             f"Command: `{summary['command']}`", "",
             "| mutant | file | category | outcome | caught by |", "|---|---|---|---|---|"]
    for r in summary["results"]:
        lines.append(f"| {r['id']} | {r['file']} | {r['category']} | {r['outcome']} | {r['caught_by'] or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run", help="names the result file benchmarks/results/mutation_<label>.json")
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--render", metavar="LABEL", help="only write the markdown table of an existing result file")
    parser.add_argument("--check", action="store_true", help="only check that every original occurs exactly once")
    parser.add_argument("--rev", help="run the tests of this git revision (default: the working tree)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant's test run")
    args = parser.parse_args(argv)
    if args.render:
        source = RESULTS / f"mutation_{args.render}.json"
        source.with_suffix(".md").write_text(markdown(json.loads(source.read_text())))
        return 0
    mutants = load_mutants()
    problems = check(mutants, ROOT)
    if problems:
        print("\n".join(problems))
        return 2
    if args.check:
        print(f"{len(mutants)} mutants, every original occurs exactly once")
        return 0
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutants}
        if unknown:
            raise SystemExit(f"unknown mutant ids {sorted(unknown)}")
        mutants = [m for m in mutants if m["id"] in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation_pass_") as tmp:
        copy = Path(tmp) / "repo"
        if args.rev:  # the committed tree of a revision (e.g. the tests before the right-answer tests)
            copy.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.rev], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(copy)], input=archive.stdout, check=True)
        else:  # the working tree; .dvc stays (stages look for the DVC root), .git and the data do not travel
            shutil.copytree(ROOT, copy, ignore=_ignored)
        # Stage tests open the copy as a DVC repository, which needs git: a fresh one-commit repository.
        git_env = {**os.environ, "GIT_AUTHOR_NAME": "mutation", "GIT_AUTHOR_EMAIL": "m@m",
                   "GIT_COMMITTER_NAME": "mutation", "GIT_COMMITTER_EMAIL": "m@m"}
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
            subprocess.run(["git", *command], cwd=copy, env=git_env, check=True, capture_output=True)
        # Baseline: every test set must pass on the unmutated copy, else a "catch" would mean nothing.
        for paths in sorted({tuple(tests_for(m)) for m in mutants}):
            code, output = run_tests(list(paths), copy, args.timeout, sys.executable)
            print(f"baseline {'ok' if code == 0 else 'FAILED'}: {' '.join(paths)}", flush=True)
            if code != 0:
                print(output[-3000:])
                return 3
        for i, mutant in enumerate(mutants, 1):
            row = run_mutant(mutant, copy, args.timeout, sys.executable)
            rows.append(row)
            print(f"[{i}/{len(mutants)}] {row['outcome']:>9}  {row['seconds']:6.1f}s  {row['id']}  {row['caught_by']}",
                  flush=True)
    caught = sum(r["outcome"] == "caught" for r in rows)
    summary = {"label": args.label, "mutants": len(rows), "caught": caught,
               "rate": round(caught / len(rows), 4) if rows else None,
               "note": "tests of the mutated package only: a lower bound for the whole fast suite",
               "command": "python scripts/mutation_pass.py --label " + args.label + (f" --rev {args.rev}" if args.rev else ""),
               "rev": args.rev or "working tree",
               "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"mutation_{args.label}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(summary))
    print(f"\n{caught}/{len(rows)} caught ({summary['rate']:.0%}); written to {out.relative_to(ROOT)}")
    for r in rows:
        if r["outcome"] != "caught":
            print(f"  {r['outcome']}: {r['id']} ({r['category']}): {r['description']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
