"""What every benchmark script shares: fair side-by-side timing, the machine's description, the results file.

Timing protocol (``compare``): both contenders are warmed up first (allocator, oneDNN kernels, lazy init), then
run alternately ``repeats`` times (A, B, A, B, ...) so that a change in machine load hits both alike, and each
one's time is the median of its repeats. The ratio is always ``median(A) / median(B)``, stated by the caller.

Results: each script appends or replaces its rows (keyed by ``row_id``) in ``benchmarks/results/<name>.json``,
with the machine description and the command that produced them; ``summarize.py`` turns those files into
``reports/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))  # the scripts run from a checkout, installed or not

from equitune.pipeline.io import write_json  # noqa: E402


@dataclass(frozen=True)
class Comparison:
    """Median seconds of two contenders timed alternately, and their ratio ``a / b``."""

    a_seconds: float
    b_seconds: float
    a_all: tuple[float, ...]
    b_all: tuple[float, ...]

    @property
    def ratio(self) -> float:
        return self.a_seconds / self.b_seconds


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(a: Callable[[], object], b: Callable[[], object], repeats: int, warmup: int = 1) -> Comparison:
    """Warm both up, then time them alternately ``repeats`` times each; medians and ratio ``a / b``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        a()
        b()
    a_times, b_times = [], []
    for i in range(repeats):
        # Alternate which one goes first, so neither always runs right after the other's cache footprint.
        if i % 2 == 0:
            a_times.append(time_once(a))
            b_times.append(time_once(b))
        else:
            b_times.append(time_once(b))
            a_times.append(time_once(a))
    return Comparison(statistics.median(a_times), statistics.median(b_times), tuple(a_times), tuple(b_times))


def self_cpu_ms(fn: Callable[[], object], calls: int = 1, cuda: bool = False) -> dict[str, float]:
    """torch.profiler self time per operator, in ms per call of ``fn``: where the time goes.

    CPU self time; with ``cuda`` the operators' self time on the GPU is added (kernels run asynchronously).
    """
    from collections import defaultdict

    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
    per_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        device_ms = getattr(event, "self_device_time_total", 0) if cuda else 0
        per_op[event.key] += (event.self_cpu_time_total + device_ms) / 1000.0 / calls
    return dict(per_op)


def top_operators(per_op: dict[str, float], top: int = 6) -> list[tuple[str, float]]:
    """The ``top`` operators by time, with their share, as ``(name, ms)`` pairs."""
    return [(op, round(ms, 3)) for op, ms in sorted(per_op.items(), key=lambda t: -t[1])[:top]]


def extra_operators(a: dict[str, float], b: dict[str, float], top: int = 6) -> list[tuple[str, float]]:
    """Operators with more time under ``a`` than under ``b`` (ms per call), largest first."""
    extra = {op: ms - b.get(op, 0.0) for op, ms in a.items()}
    return top_operators({op: ms for op, ms in extra.items() if ms > 0}, top)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict:
    """Where and how a row was measured. ``load_1min`` lets a reader see a loaded machine for what it is."""
    info = {
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every benchmark takes. ``--quick`` is a tiny size for the smoke test: its numbers mean nothing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test (numbers meaningless)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of each contender (median taken)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--results", default=None,
                        help="results JSON to update (default benchmarks/results/<name>.json; 'none' to skip)")
    parser.add_argument("--note", default="", help="free text stored with the rows, e.g. 'loaded machine'")
    return parser


def setup_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)


def command_line() -> str:
    """The command that reproduces a row, relative to the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return " ".join(["python", shlex.quote(script_text), *map(shlex.quote, sys.argv[1:])])


def results_path(name: str, args: argparse.Namespace) -> Path | None:
    if args.results is not None and args.results.lower() == "none":
        return None
    if args.quick and args.results is None:
        return None  # a smoke-test run must never overwrite real measurements
    return Path(args.results) if args.results else RESULTS_DIR / f"{name}.json"


def record(name: str, args: argparse.Namespace, rows: list[dict], device: str = "cpu") -> Path | None:
    """Add or replace ``rows`` (each with a ``row_id``) in the results file; other rows are kept."""
    path = results_path(name, args)
    if path is None:
        return None
    existing = json.loads(path.read_text()) if path.exists() else {"benchmark": name, "rows": []}
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = machine_info(device)
    new_ids = {row["row_id"] for row in rows}
    kept = [row for row in existing["rows"] if row["row_id"] not in new_ids]
    for row in rows:
        kept.append({**row, "command": command_line(), "measured_at": stamp, "machine": machine, "note": args.note})
    existing["rows"] = kept
    write_json(path, existing)
    return path


def fmt_ratio_line(label: str, ratio: float, target: str) -> str:
    """The last line every script prints."""
    return f"RATIO {label}: {ratio:.3f} (target {target})"
