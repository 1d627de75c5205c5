"""Benchmark 4: peak memory of equitune with and without chunking over the group axis.

``EquiTune(..., chunk_size=c)`` sends c group elements' copies through the backbone at a time instead of all
|G| at once, so the backbone's activations are those of a c*B batch, not |G|*B. This script measures, for each
chunk size, the peak resident memory (RSS high-water mark, ``getrusage``) of a fresh subprocess running one
inference forward of a D4-equituned CNN at a batch that does not fit a small budget unchunked, minus the same
process's RSS just before the forward (model, input and libraries already loaded). tracemalloc would miss
torch's allocations; RSS sees them. Time per forward is measured in this process, alternating the chunk sizes.
Outputs must be bitwise identical across chunk sizes (checked; the script fails otherwise).

Ratio = peak working memory unchunked / peak working memory with chunk size 1.

    python benchmarks/memory.py          # D4, batch 64 of 1x96x96 images, budget 256 MiB
    python benchmarks/memory.py --quick  # smoke test
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_models as models
import timing
import torch

from equitune.core.groups import image_action
from equitune.core.wrappers import EquiTune


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc; falls back to the high-water mark)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def build(group: str, chunk: int | None, batch: int, size: int) -> tuple[EquiTune, torch.Tensor]:
    torch.manual_seed(0)
    model = EquiTune(models.SmallCNN(), image_action(group), chunk_size=chunk).eval()
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def child(args) -> int:
    """Run in a fresh process: one forward, report peak working memory (and save the output for the check)."""
    chunk = None if args.chunk == 0 else args.chunk
    model, x = build(args.group, chunk, args.batch, args.size)
    with torch.no_grad():
        model(x[:1])  # load kernels and libraries with a one-image batch, so they are not counted
        before = rss_mib()
        high_water_before = peak_rss_mib()
        output = model(x)
    peak = peak_rss_mib()
    torch.save(output, args.child_output)
    # If the high-water mark was already above the forward's peak, the forward's own peak is not visible.
    print(json.dumps({"rss_before_mib": before, "peak_rss_mib": peak, "working_mib": peak - before,
                      "peak_was_before_forward": peak <= high_water_before}))
    return 0


def measure(chunk: int | None, args, out_dir: Path) -> tuple[dict, torch.Tensor]:
    out_file = out_dir / f"out_{chunk or 0}.pt"
    command = [sys.executable, __file__, "--child", "--chunk", str(chunk or 0), "--group", args.group,
               "--batch", str(args.batch), "--size", str(args.size), "--child-output", str(out_file)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"memory child for chunk size {chunk} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(out_file)


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--group", default=None, choices=["c4", "d4"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--budget-mib", type=float, default=None, help="the small memory budget to compare against")
    parser.add_argument("--child", action="store_true", help=argparse_hidden())
    parser.add_argument("--chunk", type=int, default=0, help=argparse_hidden())
    parser.add_argument("--child-output", default=None, help=argparse_hidden())
    args = parser.parse_args()
    timing.setup_threads(args)
    args.group = args.group or ("c4" if args.quick else "d4")
    args.batch = args.batch or (4 if args.quick else 64)
    args.size = args.size or (32 if args.quick else 96)
    if args.child:
        return child(args)
    budget = args.budget_mib or (1.0 if args.quick else 256.0)
    order = image_action(args.group).group.order
    chunks = [None] + [c for c in (order // 2, 1) if c < order]

    measured, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in chunks:
            measured[chunk], outputs[chunk] = measure(chunk, args, Path(tmp))
    for chunk in chunks[1:]:
        if not torch.equal(outputs[chunk], outputs[None]):
            diff = (outputs[chunk] - outputs[None]).abs().max().item()
            raise SystemExit(f"chunk size {chunk} changed the output (max |diff| {diff:.3g}); chunking must not")

    # Time per forward in this process, the chunk sizes taking turns (all pairs against unchunked).
    repeats = args.repeats or (1 if args.quick else 5)
    seconds, unchunked_seconds = {}, []
    plain_model, x = build(args.group, None, args.batch, args.size)
    for chunk in chunks[1:]:
        chunked_model, _ = build(args.group, chunk, args.batch, args.size)
        with torch.no_grad():
            result = timing.compare(lambda m=chunked_model: m(x), lambda: plain_model(x), repeats=repeats, warmup=1)
        seconds[chunk] = result.a_seconds
        unchunked_seconds.extend(result.b_all)
    seconds[None] = statistics.median(unchunked_seconds)

    rows = []
    for chunk in chunks:
        m = measured[chunk]
        rows.append({
            "row_id": f"{args.group}/B{args.batch}/{args.size}px/chunk{chunk or order}",
            "group": args.group, "batch": args.batch, "image_size": args.size,
            "chunk_size": chunk or order, "backbone_batch": (chunk or order) * args.batch,
            "working_mib": round(m["working_mib"], 1), "peak_rss_mib": round(m["peak_rss_mib"], 1),
            "rss_before_mib": round(m["rss_before_mib"], 1), "peak_was_before_forward": m["peak_was_before_forward"],
            "forward_ms": round(seconds[chunk] * 1000, 2), "budget_mib": budget,
            "fits_budget": m["working_mib"] <= budget, "identical_output": True,
        })
        print(f"chunk {chunk or order} of |G|={order} (backbone batch {rows[-1]['backbone_batch']:4d}): working memory "
              f"{m['working_mib']:8.1f} MiB (peak RSS {m['peak_rss_mib']:.0f}), forward {seconds[chunk] * 1000:8.1f} ms, "
              f"{'fits' if rows[-1]['fits_budget'] else 'exceeds'} {budget:.0f} MiB", flush=True)
    ratio = measured[None]["working_mib"] / max(measured[chunks[-1]]["working_mib"], 1e-3)
    for row in rows:
        row["ratio_memory_unchunked_over_chunk1"] = round(ratio, 3)
    print("outputs identical (torch.equal) for every chunk size")
    path = timing.record("memory", args, rows)
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("working memory unchunked/chunk 1", ratio, f"> 1; time chunk1/unchunked "
                                f"{seconds[chunks[-1]] / seconds[None]:.2f}"))
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
