"""Benchmark 11: equituned evaluation of the whole Add-Jump test split, the project's way against the reference's.

- project: ``equitune.scan.decoding.equituned_decode`` through ``decode_batched`` (what the pipeline's
  ``accuracy(..., "equitune")`` runs): 1,024 commands per batch, the |G| transformed copies of each in the same
  batch, one decoder call per step for all of them, each batch stopping when its last sequence has ended.
- reference: the authors' order of work, re-implemented faithfully with the same model: one command at a time,
  and at every decoding step one forward pass per group element (its own encoder state and decoder state), the
  mapped-back log-probabilities averaged, greedy argmax, stop at ``<eos>``. It runs on one thread (its calls are
  one row each: a second thread would only slow it down).

Both must produce the same sequences (checked; the script fails otherwise) and the same exact-match accuracy.
The model is the pipeline's Add-Jump LSTM checkpoint when it exists (``--checkpoint``, default
models/scan/add_jump-lstm-0/pretrained.pt, so that sequences end where a trained model ends them), else the
default profile's architecture with random weights (every sequence then runs the full 50 steps). The reference
over all 7,706 commands takes minutes; ``--reference-subset N`` times it on every k-th command (N of them) and
scales its time to the whole split (the row says so). Ratio = reference / project, the last line.

    python benchmarks/scan_evaluation.py
    python benchmarks/scan_evaluation.py --reference-subset 800   # on a busy machine
    python benchmarks/scan_evaluation.py --quick                  # smoke test
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import timing
import torch

from equitune.scan.config import bind_scan_group
from equitune.scan.data import generate_split, input_vocabulary, output_vocabulary
from equitune.scan.decoding import EOS_ID, SOS_ID, decode_batched, decoding_threads, equituned_decode, exact_match
from equitune.scan.model import PAD_ID, Seq2Seq
from equitune.scan.training import encode_pairs

TARGET = 20.0
MAX_LENGTH = 50  # the default profile's scan.evaluation.max_output_length
GROUPS = {
    "jump_run": {"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]},
    "verbs": {"cycles": [["walk", "look", "run", "jump"]], "output_cycles": [["WALK", "LOOK", "RUN", "JUMP"]]},
}
DEFAULT_CHECKPOINT = timing.ROOT / "models" / "scan" / "add_jump-lstm-0" / "pretrained.pt"


def load_model(checkpoint: Path | None) -> tuple[Seq2Seq, str]:
    """The pipeline's checkpoint when given and present (the default profile's architecture), else random weights."""
    model = Seq2Seq("lstm", len(input_vocabulary()), len(output_vocabulary()), 64, 1, 0.1, "after_rnn", 9)
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), str(checkpoint.relative_to(timing.ROOT) if checkpoint.is_relative_to(timing.ROOT)
                                 else checkpoint)
    torch.manual_seed(0)
    return model.eval(), "random weights"


@torch.no_grad()
def reference_decode(model: Seq2Seq, command: torch.Tensor, input_perm, output_perm) -> list[int]:
    """One command ``[1, S]``: per step, one forward per group element, averaged in the original frame."""
    group, on_ids, on_scores = input_perm.group, output_perm.on_ids, output_perm.on_scores
    encoded = [model.encode(input_perm.on_ids.apply(command, g)) for g in group]
    hidden = [e.hidden for e in encoded]
    token = torch.tensor([SOS_ID])
    output = []
    for _ in range(MAX_LENGTH):
        mapped_back = []
        for g in group:
            log_probs, hidden[g] = model.decode_step(on_ids.apply(token, g), hidden[g], encoded[g])
            mapped_back.append(on_scores.apply(log_probs, group.inverse(g)))
        token = torch.stack(mapped_back).mean(dim=0).argmax(dim=-1)
        output.append(int(token))
        if output[-1] == EOS_ID:
            return output
    return [t for t in output if t != PAD_ID]  # no <eos>: the same convention as decode_batched


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--reference-subset", type=int, default=None,
                        help="time the reference on this many commands (every k-th) and scale to the whole split")
    parser.add_argument("--batch", type=int, default=1024, help="the project's commands per batch")
    args = parser.parse_args()
    timing.setup_threads(args)
    model, weights = load_model(args.checkpoint)
    test = encode_pairs(generate_split("add_jump").test)
    src = test.src
    if args.quick:
        src, test_targets = src[:: 400], [test.target_lists[i] for i in range(0, len(test), 400)]
    else:
        test_targets = list(test.target_lists)
    subset = list(range(len(src)))
    if args.reference_subset and not args.quick and args.reference_subset < len(src):
        step = len(src) // args.reference_subset
        subset = subset[::step][: args.reference_subset]
    rows = []
    for name in args.groups:
        perms = bind_scan_group(GROUPS[name])
        project = decode_batched(lambda s, p=perms: equituned_decode(model, s, MAX_LENGTH, *p), src, args.batch)
        started = time.perf_counter()  # warm-up done above; time the project's whole-split evaluation once more
        project = decode_batched(lambda s, p=perms: equituned_decode(model, s, MAX_LENGTH, *p), src, args.batch)
        project_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with decoding_threads(1):  # one row per call: the thread count the project would choose for it
            reference = {i: reference_decode(model, src[i:i + 1, : int((src[i] != 0).sum())], *perms) for i in subset}
        reference_seconds = (time.perf_counter() - started) * len(src) / len(subset)
        disagree = [i for i in subset if reference[i] != project[i]]
        if disagree:
            raise SystemExit(f"{name}: the project's and the reference's decoding differ on {len(disagree)} commands "
                             f"(first: {disagree[:3]}); the benchmark is invalid")
        accuracy = exact_match(project, test_targets)
        ratio = reference_seconds / project_seconds
        row = {
            "row_id": f"scan_addjump_test_equituned_eval/{name}", "group": name,
            "group_order": perms[0].group.order, "commands": len(src), "weights": weights,
            "project_batch": args.batch, "project_s": round(project_seconds, 3),
            "reference_s": round(reference_seconds, 3), "reference_commands_timed": len(subset),
            "reference_extrapolated": len(subset) < len(src), "exact_match_accuracy": round(accuracy, 4),
            "ratio": round(ratio, 2), "target": f">= {TARGET}",
        }
        rows.append(row)
        scaled = f" (timed on {len(subset)}, scaled)" if row["reference_extrapolated"] else ""
        print(f"{name} (|G|={row['group_order']}, {weights}): project {project_seconds:.2f} s | reference "
              f"{reference_seconds:.1f} s{scaled} | accuracy {accuracy:.4f} | speed-up {ratio:.1f}", flush=True)
    path = timing.record("scan_evaluation", args, rows)
    if path:
        print(f"rows written to {path}")
    worst = min(row["ratio"] for row in rows)
    print(timing.fmt_ratio_line("reference / project, equituned Add-Jump test evaluation, smallest", worst,
                                f">= {TARGET}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
