"""Benchmark 13: frame decoding versus equituned decoding of a whole SCAN test split, same model, side by side.

- equitune: ``equitune.scan.decoding.equituned_decode`` through ``decode_batched`` (the pipeline's
  ``accuracy(..., "equitune")``): every command decodes as its |G| transformed copies.
- frame: ``equitune.scan.decoding.frame_decode`` with the default params' support frame
  (``scan.tune.frame_excluded_words``: Add-Jump "jump", Around-Right "right"): every command decodes only through
  the group elements that map it off those words (one copy for most commands; the whole group for a command that
  an element fixes or that no element maps there), the pipeline's ``accuracy(..., "frame")``.

Rows: Add-Jump with jump<->run (|G| = 2) and the verb 4-cycle (|G| = 4), Around-Right with left<->right. The model
is the pipeline's LSTM checkpoint of the split when it exists (``--checkpoint-dir``, default models/scan, so that
sequences end where a trained model ends them, and the accuracies mean something), else the default profile's
architecture with random weights (every sequence then runs the full 50 steps). Timing: ``timing.compare`` (warm-up,
alternating repeats, medians). Ratio = equitune seconds / frame seconds, the last line the smallest; no target (a
frame of size one is expected to cost about 1/|G| of the rows, but a decoding step on few rows is overhead-bound).

    python benchmarks/scan_frame_decoding.py
    python benchmarks/scan_frame_decoding.py --quick   # smoke test
"""

from __future__ import annotations

import sys
from pathlib import Path

import timing
import torch
from scan_evaluation import GROUPS, MAX_LENGTH, load_model

from equitune.scan.config import bind_scan_group, scan_support_frame
from equitune.scan.data import generate_split
from equitune.scan.decoding import decode_batched, equituned_decode, exact_match, frame_decode, frame_mask
from equitune.scan.training import encode_pairs

ROWS = (("add_jump", "jump_run"), ("add_jump", "verbs"), ("around_right", "left_right"))
EXCLUDED = {"add_jump": ["jump"], "around_right": ["right"]}  # the default params' scan.tune.frame_excluded_words
SPECS = {**GROUPS, "left_right": {"cycles": [["left", "right"]], "output_cycles": [["TURN_LEFT", "TURN_RIGHT"]]}}


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", type=Path, default=timing.ROOT / "models" / "scan")
    parser.add_argument("--batch", type=int, default=1024, help="commands per batch (the pipeline's)")
    args = parser.parse_args()
    timing.setup_threads(args)
    repeats = args.repeats or (1 if args.quick else 3)
    rows = []
    for split, group in ROWS:
        model, weights = load_model(args.checkpoint_dir / f"{split}-lstm-0" / "pretrained.pt")
        test = encode_pairs(generate_split(split).test)
        every = 400 if args.quick else 1
        src, targets = test.src[::every], list(test.target_lists[::every])
        input_perm, output_perm = bind_scan_group(SPECS[group])
        frame = scan_support_frame(EXCLUDED[split], input_perm)

        def equitune(m=model, x=src, p=(input_perm, output_perm)):
            return decode_batched(lambda s: equituned_decode(m, s, MAX_LENGTH, *p), x, args.batch)

        def framed(m=model, x=src, p=(input_perm, output_perm), f=frame):
            return decode_batched(lambda s: frame_decode(m, s, MAX_LENGTH, *p, f), x, args.batch)

        result = timing.compare(equitune, framed, repeats=repeats)
        equitune_out, frame_out = equitune(), framed()
        row = {
            "row_id": f"scan_frame_decoding/{split}/{group}", "split": split, "group": group,
            "group_order": input_perm.group.order, "commands": len(src), "weights": weights,
            "mean_frame_size": round(float(frame_mask(frame, src, input_perm).sum(dim=0).double().mean()), 3),
            "equitune_s": round(result.a_seconds, 3), "frame_s": round(result.b_seconds, 3),
            "equitune_accuracy": round(exact_match(equitune_out, targets), 4),
            "frame_accuracy": round(exact_match(frame_out, targets), 4),
            "same_output_share": round(sum(a == b for a, b in zip(equitune_out, frame_out, strict=True)) / len(src), 4),
            "ratio": round(result.ratio, 2),
        }
        rows.append(row)
        print(f"{split} {group} (|G|={row['group_order']}, {weights}): mean frame size {row['mean_frame_size']} | "
              f"equitune {result.a_seconds:.2f} s | frame {result.b_seconds:.2f} s | accuracy equitune "
              f"{row['equitune_accuracy']:.4f}, frame {row['frame_accuracy']:.4f} | speed-up {result.ratio:.2f}",
              flush=True)
    path = timing.record("scan_frame_decoding", args, rows)
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("equitune / frame seconds, whole SCAN test split, smallest",
                                min(row["ratio"] for row in rows), "none (informational)"))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
