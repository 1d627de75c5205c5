"""Benchmark 12: torch.compile of the EquiTune wrapper versus the same wrapper eager (forward, eval mode).

For C4 and D4, a small CNN (28 px, batch 64) and ImageNet-pretrained efficientnet_lite0 (64 px, batch 4; resnet18
with random weights on request): ``torch.compile(EquiTune(backbone, G))`` (inductor, default mode) against the eager
wrapper, forward under no_grad. The first compiled call (tracing and inductor's code generation, in a fresh inductor
cache so that an earlier run cannot make it look cheap) is timed once and reported on its own, as ``compile_s``;
then the compiled output is checked against eager (float32 round-off: 1e-5 times max(1, max |output|)) and only then
are the two timed. Ratio = eager / compiled time per forward (> 1: the compiled wrapper is faster); the break-even
count is compile_s over the time saved per forward.

    python benchmarks/compile_speed.py            # default sizes (a few minutes on 2 cores: compiling dominates)
    python benchmarks/compile_speed.py --quick    # smoke test (small CNN only)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

# Before torch is imported: inductor reads its cache directory once, and a warm cache would hide the compile cost.
CACHE_DIR = tempfile.mkdtemp(prefix="compile_speed_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE_DIR

import timing  # noqa: E402
import torch  # noqa: E402
from wrapper_overhead import build  # noqa: E402  (the backbones wrapper_overhead times, built the same way)

from equitune.core.checks import TOLERANCES  # noqa: E402
from equitune.core.groups import image_action  # noqa: E402
from equitune.core.wrappers import EquiTune  # noqa: E402

TARGET = 1.0

# backbone -> (channels, image size, batch B, default repeats).
SIZES = {
    "small_cnn": (1, 28, 64, 15),
    "efficientnet_lite0": (3, 64, 4, 10),
    "resnet18": (3, 64, 4, 10),
}
QUICK_SIZES = {
    "small_cnn": (1, 16, 2, 2),
    "efficientnet_lite0": (3, 32, 1, 1),
    "resnet18": (3, 32, 1, 1),
}
DEFAULT_BACKBONES = ["small_cnn", "efficientnet_lite0"]
QUICK_BACKBONES = ["small_cnn"]  # compiling efficientnet takes most of a minute per group even at tiny sizes


def measure(name: str, group_name: str, args, backbone: torch.nn.Module) -> dict:
    channels, size, batch, default_repeats = (QUICK_SIZES if args.quick else SIZES)[name]
    repeats = args.repeats or default_repeats
    wrapper = EquiTune(backbone, image_action(group_name)).eval()
    x = torch.randn(batch, channels, size, size)
    torch._dynamo.reset()  # each row compiles from scratch: no shapes or guards carried over from the previous row
    compiled = torch.compile(wrapper)

    @torch.no_grad()
    def run_compiled():
        return compiled(x)

    @torch.no_grad()
    def run_eager():
        return wrapper(x)

    compile_s = timing.time_once(run_compiled)
    expected, actual = run_eager(), run_compiled()
    difference = float((actual - expected).abs().max())
    tolerance = TOLERANCES[torch.float32] * max(1.0, float(expected.abs().max()))
    if not difference <= tolerance:
        raise SystemExit(f"{name}/{group_name}: the compiled wrapper's output differs from eager by {difference:.3g} "
                         f"(more than float32 round-off, {tolerance:.3g}); not timing it")
    result = timing.compare(run_compiled, run_eager, repeats=repeats, warmup=1)
    saved = result.b_seconds - result.a_seconds
    return {
        "row_id": f"cpu/{name}/{group_name}/forward", "backbone": name, "group": group_name, "image_size": size,
        "batch": batch, "repeats": repeats, "compile_s": round(compile_s, 2),
        "eager_ms": round(result.b_seconds * 1000, 3), "compiled_ms": round(result.a_seconds * 1000, 3),
        "ratio": round(result.b_seconds / result.a_seconds, 4), "target": f">= {TARGET}",
        "met": result.b_seconds / result.a_seconds >= TARGET,
        "break_even_calls": round(compile_s / saved) if saved > 0 else None,
        "max_abs_diff": difference, "tolerance": tolerance,
    }


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=None, choices=list(SIZES),
                        help=f"default {' '.join(DEFAULT_BACKBONES)} ({' '.join(QUICK_BACKBONES)} with --quick)")
    parser.add_argument("--groups", nargs="+", default=["c4", "d4"], choices=["hflip", "c4", "d4"])
    args = parser.parse_args()
    timing.setup_threads(args)
    torch.manual_seed(0)
    try:
        # Inductor's one-time start-up (imports, compiler checks) on a trivial function, so that it is not charged
        # to the first row's compile time.
        startup_s = timing.time_once(lambda: torch.compile(lambda t: t * 2)(torch.ones(2)))
        print(f"inductor start-up {startup_s:.1f} s (not in any row); cache {CACHE_DIR}", flush=True)
        rows = []
        for name in args.backbones or (QUICK_BACKBONES if args.quick else DEFAULT_BACKBONES):
            backbone = build(name, (QUICK_SIZES if args.quick else SIZES)[name][1])
            for group_name in args.groups:
                row = measure(name, group_name, args, backbone)
                print(f"{row['row_id']:38s} B={row['batch']:3d} compile {row['compile_s']:6.1f} s  eager "
                      f"{row['eager_ms']:9.2f} ms  compiled {row['compiled_ms']:9.2f} ms  ratio {row['ratio']:.3f}  "
                      f"break-even {row['break_even_calls']} calls  max|diff| {row['max_abs_diff']:.2g}", flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
    path = timing.record("compile_speed", args, rows)
    if path:
        print(f"rows written to {path}")
    worst = min(row["ratio"] for row in rows)
    print(timing.fmt_ratio_line(f"eager/compiled forward, worst of {len(rows)} rows", worst, f">= {TARGET}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
