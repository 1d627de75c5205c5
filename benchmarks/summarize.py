"""Write reports/benchmarks.md from the results files in benchmarks/results/ (one per benchmark script).

Each table row is a real measurement recorded by a benchmark script; every row points to the run it came from
(the exact command, machine, CPU model, thread count, torch version, device, 1-minute load average, time).
A benchmark without a results file is listed as not yet measured.

    python benchmarks/summarize.py [--results-dir benchmarks/results] [--out reports/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timing

from equitune.pipeline.io import write_text

# name -> (title, what the ratio means, columns shown). The order is the order of the report; the title's number
# is the benchmark's number everywhere (its script's docstring, benchmarks/README.md).
BENCHMARKS = {
    "wrapper_overhead": (
        "1. Wrapper overhead over its limit",
        "EquiTune on B images versus the bare backbone on |G|*B images. Ratio = wrapper / bare; target <= 1.05.",
        ["device", "amp", "channels_last", "backbone", "group", "mode", "image_size", "batch", "bare_batch",
         "wrapper_ms", "bare_ms", "ratio", "met"],
    ),
    "sequence_batching": (
        "2. Group-batched versus looped decoding",
        "Same model and examples; looped = one group element at a time (the authors' order of work). "
        "Ratio = looped time / batched time; target >= 1.5 at |G| = 2.",
        ["device", "task", "group_order", "sequences", "batch", "generated_tokens", "looped_seq_per_s", "batched_seq_per_s",
         "looped_tok_per_s", "batched_tok_per_s", "ratio", "met"],
    ),
    "param_sharing": (
        "3. Equituning versus parameter sharing",
        "Equituned small CNN (C4) versus a weight-shared C4 group CNN, trained on the same Fashion-MNIST images; "
        "ratio = equitune / group CNN time per epoch.",
        ["model", "parameters", "train_images", "epochs", "epoch_s_median", "test_accuracy_upright",
         "test_accuracy_rotated", "ratio_equitune_over_group_cnn"],
    ),
    "memory": (
        "4. Memory: chunking over the group axis",
        "Peak working memory (RSS high-water above the pre-forward RSS, fresh process per row) and forward time; "
        "outputs identical across chunk sizes.",
        ["group", "batch", "image_size", "chunk_size", "backbone_batch", "working_mib", "forward_ms", "budget_mib",
         "fits_budget", "identical_output"],
    ),
    "pipeline": (
        "5. Pipeline wall time",
        "Cold `dvc repro` of the default profile (fresh clone), by stage, and a no-op `dvc repro` right after.",
        ["kind", "stage", "status", "seconds"],
    ),
    "nlg_generation": (
        "6. NLG generation: shared decoder versus the stage's previous decoding",
        "The NLG generate stage's samples (LM; base, EquiLM, R-EquiLM; 3 axes), decoded as before (per axis and "
        "method, 60 prompts per batch) and with the shared decoder (one prefill per prompt, 512-row batches, "
        "coinciding rows computed once); the same samples. Ratio = tokens/s after / before.",
        ["model", "samples", "samples_per_demographic", "generated_tokens", "before_tok_per_s", "after_tok_per_s",
         "identical_samples", "shared_row_fraction", "ratio"],
    ),
    "paper_gpu_check": (
        "7. Paper profile on one GPU (a slice of each experiment)",
        "`paper_gpu_check.py`: ResNet-18 C4 equituning at the paper's 224 px and batch (autocast, channels-last), "
        "one SCAN pretraining cut to 10k steps, EquiLM generation with a GPU batch; ratio = wrapper / bare "
        "backbone on |G|*B images (target <= 1.05).",
        ["device", "part", "setting", "seconds", "throughput", "ratio"],
    ),
    "image_finetuning": (
        "8. Image fine-tuning on cached features versus the whole network",
        "One SGD step of the same method on B training images: the top units and the head on the frozen part's "
        "cached D4 orbits versus the whole EfficientNet-Lite0 on the images. Ratio = cached / whole-network training "
        "images/s; target >= 3. The cache row: images/s of building the cache (8 D4 elements each), paid once per "
        "image for every cell of the grid.",
        ["method", "group", "resolution", "batch", "trainable_depth", "cached_images_per_s", "whole_images_per_s",
         "ratio", "met", "images", "cache_images_per_s"],
    ),
    "cpu_isa": (
        "9. Pinned CPU kernels: cost and digits",
        "Each `base.cpu_isa` setting and each knob alone, a fresh process per measurement, contenders taking turns; "
        "median wall and CPU seconds, ratio to `native`, and whether the result's digits equal the native ones.",
        ["workload", "setting", "capability", "wall_s", "ratio_wall", "cpu_s", "ratio_cpu", "same_digits_as_native",
         "deterministic"],
    ),
    "scan_training": (
        "10. SCAN pretraining throughput: fused teacher-forced decoder versus input feeding",
        "Training examples/s of the same LSTM seq2seq on the same batches: attention after the RNN (one fused RNN call "
        "per teacher-forced batch; packed or fixed-length encoder) versus the reference's input feeding. Ratio = "
        "contender / baseline examples/s.",
        ["contender", "baseline", "batch", "hidden", "contender_examples_per_s", "baseline_examples_per_s", "ratio"],
    ),
    "scan_evaluation": (
        "11. SCAN equituned evaluation of the whole Add-Jump test split versus the reference's order of work",
        "The project's batched, group-batched greedy decoding versus a faithful re-implementation of the reference "
        "(one command at a time, one forward per group element per step); same sequences checked. Ratio = reference "
        "seconds / project seconds; target >= 20.",
        ["group", "group_order", "commands", "project_batch", "project_s", "reference_s", "reference_extrapolated",
         "exact_match_accuracy", "ratio", "target"],
    ),
    "compile_speed": (
        "12. torch.compile of the EquiTune wrapper versus eager",
        "`torch.compile(EquiTune(backbone, G))` (inductor, default mode) versus the same wrapper eager, forward in eval "
        "mode; outputs checked within float32 round-off first. compile_s is the first compiled call in a fresh inductor "
        "cache, not part of the timing. Ratio = eager / compiled time per forward; break-even = compile_s / time saved.",
        ["backbone", "group", "image_size", "batch", "compile_s", "eager_ms", "compiled_ms", "ratio", "break_even_calls",
         "met"],
    ),
    "scan_frame_decoding": (
        "13. SCAN frame decoding versus equituned decoding",
        "Greedy decoding of a whole SCAN test split, same model: every command through its |G| copies (equitune) "
        "versus only through its support frame's copies (`scan.tune.frame_excluded_words`; the whole group when no "
        "element maps the command off the excluded words). Ratio = equitune seconds / frame seconds; no target.",
        ["split", "group", "group_order", "commands", "weights", "mean_frame_size", "equitune_s", "frame_s",
         "equitune_accuracy", "frame_accuracy", "same_output_share", "ratio"],
    ),
    "startup": (
        "14. What a stage pays before its work: interpreter, imports, DVC",
        "Each item in a fresh interpreter, round-robin over the repeats, median seconds; over_baseline_s = seconds "
        "minus `python -c pass` (for the DVC row: minus the same command run without DVC). A stage pays its script's "
        "imports, then whatever its work imports on first use (mlflow when its run opens, torchvision or e2cnn for the "
        "cells that need them), once per stage process.",
        ["what", "seconds", "over_baseline_s", "direct_seconds", "ratio", "repeats"],
    ),
}


TARGET_COLUMNS = {"met", "fits_budget", "identical_output"}  # a "no" there is a missed target: shown in bold


def _cell(value, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ("**no**" if column in TARGET_COLUMNS else "no")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _run_description(row: dict) -> str:
    m = row.get("machine", {})
    parts = [f"`{row.get('command', '?')}`", f"at {row.get('measured_at', '?')}",
             f"on {m.get('host', '?')} ({m.get('cpu_model', '?')}, {m.get('logical_cpus', '?')} logical CPUs)",
             f"torch {m.get('torch', '?')} with {m.get('torch_threads', '?')} thread(s), device {m.get('device', '?')}"
             + (f" ({m['gpu']})" if m.get("gpu") else ""),
             f"1-min load average {m.get('load_1min', '?')}"]
    if row.get("note"):
        parts.append(f"note: {row['note']}")
    return ", ".join(parts)


def benchmark_section(name: str, data: dict | None) -> list[str]:
    title, meaning, columns = BENCHMARKS[name]
    lines = [f"## {title}", "", meaning, ""]
    if not data or not data.get("rows"):
        return lines + [f"Not measured yet: run `python benchmarks/{name}.py`.", ""]
    runs: dict[str, int] = {}
    lines += ["| " + " | ".join(columns + ["run"]) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in sorted(data["rows"], key=lambda r: r["row_id"]):  # stable order, whichever run wrote a row last
        run = _run_description(row)
        number = runs.setdefault(run, len(runs) + 1)
        lines.append("| " + " | ".join(_cell(row.get(c), c) for c in columns) + f" | [{number}] |")
    extras = [row for row in data["rows"] if row.get("profile_extra_ms_per_call")]
    if extras:
        lines += ["", "Rows that missed the target, profiled (torch.profiler): operators with more self time under "
                  "the wrapper than under the bare backbone, ms per call:", ""]
        for row in extras:
            ops = ", ".join(f"`{op}` {ms}" for op, ms in row["profile_extra_ms_per_call"])
            lines.append(f"- {row['row_id']}: {ops}")
    stepped = [row for row in data["rows"] if row.get("profile_step_top_ms")]
    if stepped:
        lines += ["", "Where a training step goes (torch.profiler, one batch forward+backward): top operators by self "
                  "time, ms per step:", ""]
        for row in stepped:
            lines.append(f"- {row['row_id']}: " + ", ".join(f"`{op}` {ms}" for op, ms in row["profile_step_top_ms"]))
    profiled = [row for row in data["rows"] if row.get("profile_batched_top_ms")]
    if profiled:
        lines += ["", "Rows under the target, profiled (torch.profiler, one batch): top operators by self time, "
                  "ms per call:", ""]
        for row in profiled:
            for path in ("looped", "batched"):
                ops = ", ".join(f"`{op}` {ms}" for op, ms in row[f"profile_{path}_top_ms"])
                lines.append(f"- {row['row_id']}, {path}: {ops}")
    lines += ["", "Runs:", ""] + [f"- [{n}] {run}" for run, n in runs.items()] + [""]
    return lines


def build(results_dir: Path) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/summarize.py` from `benchmarks/results/*.json`; every number is from a real "
        "run of the command listed under its table. Timings alternate the two contenders and take medians after a "
        "warm-up (see `benchmarks/timing.py`). A run on a loaded machine says so in its load average and note.",
        "",
    ]
    for name in BENCHMARKS:
        path = results_dir / f"{name}.json"
        lines += benchmark_section(name, json.loads(path.read_text()) if path.exists() else None)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(timing.RESULTS_DIR))
    parser.add_argument("--out", default=str(timing.ROOT / "reports" / "benchmarks.md"))
    args = parser.parse_args()
    text = build(Path(args.results_dir))
    write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
