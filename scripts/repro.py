"""`dvc repro` with independent stages side by side: every core busy, results bitwise the same as one at a time.

    python scripts/repro.py                  # the whole pipeline, as many stages at once as there are cores
    python scripts/repro.py -j 1             # one at a time (the output of each stage streams as with dvc repro)
    python scripts/repro.py --force          # every stage, changed or not (scripts/check_reproduce.py)
    python scripts/repro.py 'scan_tune_add_jump@verbs-lstm-0'   # a stage and what it depends on

How: DVC releases its repository lock while a stage's command runs (it holds read locks on the stage's
dependencies and a write lock on its outputs, and takes the repository lock back to record the result), so several
`dvc --wait-for-lock repro --single-item STAGE` processes may run in one checkout at once. This script is the
scheduler DVC does not have: it reads the stage graph and `dvc status` once, starts each stale stage (and everything
downstream of one) as soon as the stages it depends on are done, and gives the free slot to the ready stage on the
longest remaining path (stage times of the last run in .dvc/tmp/repro/times.json; one unit each without). Each
stage is an ordinary `dvc repro` of that stage: the same command, the same params, its own cached outputs, its own
dvc.lock entry; a stage's thread count comes from params.yaml, not from how busy the machine is, so its results do
not depend on what runs beside it.

With more than one job each stage writes to .dvc/tmp/repro/<stage>.log; this prints when a stage starts and ends,
what the running ones last printed (every --heartbeat seconds), and the end of the log of a stage that fails. On a
failure no new stage starts (with --keep-going, only the failed stage's descendants are skipped), the running ones
finish, and the exit status is 1. Ctrl-C stops every running stage (each puts its previous outputs back, as under
dvc repro) and exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOG_DIR = Path(".dvc") / "tmp" / "repro"
TIMES_FILE = LOG_DIR / "times.json"
TAIL_LINES = 40


@dataclass
class Plan:
    """The stages to run, what each waits for (among them), and its priority (longest remaining path)."""

    order: list[str]
    upstream: dict[str, set[str]]
    downstream: dict[str, set[str]]
    total: int  # stages in the pipeline (or under the targets), stale or not
    priority: dict[str, float] = field(default_factory=dict)


def plan(root: Path, targets: list[str], force: bool, times: dict[str, float]) -> Plan:
    """Read the stage graph and what `dvc status` calls changed; the stale stages and every stage downstream of one
    (within the targets' upstream closure) are to run; with ``force`` all of them."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph

    with Repo(str(root)) as repo:
        # Edges run from a stage to the stages it depends on: descendants are upstream, ancestors downstream.
        graph = nx.relabel_nodes(get_active_graph(repo.index.graph), lambda stage: stage.addressing)
        unknown = [t for t in targets if t not in graph]
        if unknown:
            names = ", ".join(sorted(graph))
            raise SystemExit(f"repro: no stage named {', '.join(unknown)} in dvc.yaml (stages: {names})")
        chosen = set(graph) if not targets else set().union(*({t} | nx.descendants(graph, t) for t in targets))
        # status of every stage at once: one pass over the index (per target, DVC collects the index again)
        changed = chosen if force else set(repo.status()) & chosen
    within = graph.subgraph(chosen)
    stale = changed.union(*(nx.ancestors(within, name) for name in changed))
    work = within.subgraph(stale).reverse()  # edges now run from a stage to the stages that need it
    order = list(nx.lexicographical_topological_sort(work))
    result = Plan(order=order, upstream={n: set(work.predecessors(n)) for n in order},
                  downstream={n: set(work.successors(n)) for n in order}, total=len(chosen))
    for name in reversed(order):  # downstream first: a stage's priority needs its descendants'
        tail = max((result.priority[d] for d in result.downstream[name]), default=0.0)
        result.priority[name] = times.get(name, 1.0) + tail
    return result


def _closure(name: str, downstream: dict[str, set[str]]) -> set[str]:
    """``name`` and every stage of the plan downstream of it."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(downstream[current])
    return seen


# ----- running ----------------------------------------------------------------------------------------------------

@dataclass
class Running:
    stage: str
    process: subprocess.Popen
    started: float
    log: Path | None
    handle: IO | None


def stage_command(stage: str, force: bool) -> list[str]:
    return [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []),
            stage]


def start(stage: str, root: Path, force: bool, stream: bool) -> Running:
    log = None if stream else root / LOG_DIR / f"{stage}.log"
    handle = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("w")
    process = subprocess.Popen(stage_command(stage, force), cwd=root, stdout=handle, stderr=subprocess.STDOUT
                               if handle else None, start_new_session=True)
    return Running(stage, process, time.monotonic(), log, handle)


def last_line(log: Path | None, width: int = 100) -> str:
    if log is None or not log.exists():
        return ""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        text = f.read().decode(errors="replace")
    pieces = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    line = pieces[-1] if pieces else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def tail(log: Path | None, lines: int = TAIL_LINES) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def say(message: str) -> None:
    print(f"[repro {time.strftime('%H:%M:%S')}] {message}", flush=True)


def execute(root: Path, work: Plan, jobs: int, force: bool, keep_going: bool, heartbeat: float,
            times: dict[str, float]) -> int:
    stream = jobs == 1
    waiting = list(work.order)
    running: dict[str, Running] = {}
    done: list[str] = []
    failed: list[str] = []
    skipped: set[str] = set()
    started_all = time.monotonic()
    next_beat = started_all + heartbeat
    stop_starting = False

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    # Started with SIGINT ignored (a background job of a shell, a test runner's worker), Python would ignore Ctrl-C
    # and so would every stage it starts (exec keeps an ignored signal ignored): take it back for both.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while waiting or running:
            if not stop_starting:
                ready = [s for s in waiting if not (work.upstream[s] - set(done))]
                ready.sort(key=lambda s: -work.priority[s])
                for stage in ready[: max(0, jobs - len(running))]:
                    waiting.remove(stage)
                    running[stage] = start(stage, root, force, stream)
                    say(f"Running stage '{stage}' ({len(done)} of {len(work.order)} done, {len(running)} running)")
            for stage, job in list(running.items()):
                code = job.process.poll()
                if code is None:
                    continue
                seconds = time.monotonic() - job.started
                if job.handle:
                    job.handle.close()
                del running[stage]
                if code == 0:
                    done.append(stage)
                    times[stage] = seconds
                    say(f"done    '{stage}' in {clock(seconds)}")
                    continue
                failed.append(stage)
                say(f"FAILED  '{stage}' (exit {code}) after {clock(seconds)}"
                    + (f"; log: {job.log}" if job.log else ""))
                if job.log:
                    print(tail(job.log), flush=True)
                if keep_going:
                    descendants = _closure(stage, work.downstream) - {stage}
                    skipped |= descendants & set(waiting)
                    waiting = [s for s in waiting if s not in descendants]
                else:
                    stop_starting = True
                    skipped |= set(waiting)
                    waiting = []
            if time.monotonic() >= next_beat and running and not stream:
                next_beat = time.monotonic() + heartbeat
                for stage, job in running.items():
                    say(f"  running '{stage}' {clock(time.monotonic() - job.started)}: {last_line(job.log)}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        say(f"interrupted: stopping {', '.join(running) or 'nothing'}")
        for job in running.values():
            _signal_group(job.process, signal.SIGINT)
        deadline = time.monotonic() + 60
        for job in running.values():
            try:
                job.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(job.process, signal.SIGKILL)
                job.process.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        save_times(root, times)

    wall = time.monotonic() - started_all
    busy = sum(times.get(s, 0.0) for s in done + failed if s in times)
    factor = f", {busy / wall:.2f} stages at a time on average" if wall > 0 and busy > 0 else ""
    say(f"{len(done)} stage(s) ran in {clock(wall)} (sum of their times {clock(busy)}{factor})")
    if failed:
        say(f"failed: {', '.join(failed)}" + (f"; not run: {len(skipped)} stage(s) after it" if skipped else ""))
        return 1
    return 0


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def load_times(root: Path) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads((root / TIMES_FILE).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def save_times(root: Path, times: dict[str, float]) -> None:
    path = root / TIMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(times, indent=1, sort_keys=True))
    temporary.replace(path)


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages to bring up to date with their upstream (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=default_jobs(),
                        help="stages at once (default: the cores this process may use, %(default)s here)")
    parser.add_argument("-f", "--force", action="store_true", help="run every stage, changed or not")
    parser.add_argument("-k", "--keep-going", action="store_true",
                        help="after a failure, go on with the stages that do not depend on it")
    parser.add_argument("--dry", action="store_true", help="print the stages that would run, in order, and stop")
    parser.add_argument("--heartbeat", type=float, default=60.0, metavar="S",
                        help="print what the running stages last printed every S seconds (default: 60)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    root = Path.cwd()
    if not (root / "dvc.yaml").exists():
        parser.error(f"no dvc.yaml in {root}: run from the repository root")
    times = load_times(root)
    work = plan(root, args.targets, args.force, times)
    if not work.order:
        say(f"all {work.total} stage(s) up to date")
        return 0
    say(f"{len(work.order)} of {work.total} stage(s) to run, {min(args.jobs, len(work.order))} at a time"
        + ("" if args.jobs == 1 else f" (logs in {LOG_DIR}/)"))
    if args.dry:
        for stage in work.order:
            print(stage)
        return 0
    return execute(root, work, args.jobs, args.force, args.keep_going, args.heartbeat, times)


if __name__ == "__main__":
    sys.exit(main())
