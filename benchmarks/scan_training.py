"""Benchmark 10: SCAN pretraining throughput of the decoder arrangements, same batches, same batch size.

- ``input_feeding`` (the reference's decoder, the paper profile's): the attention context is fed into the RNN, so a
  teacher-forced batch is a Python loop over its target steps (up to 49), each a one-step RNN call; the encoder
  reads packed sequences. Teacher forcing 0.5 (the reference's) and 1.0.
- ``after_rnn`` (the default profile's): Luong's attention after the RNN, the whole teacher-forced target in one
  fused RNN call; encoder on packed sequences, or on commands padded to 9 tokens (one fused call, the default).

Every contender trains an LSTM seq2seq (hidden 64) with Adam on the same random batches of the Add-Jump training
file (the default profile's batch composition), the project's loss and loop (``equitune.scan.training``).
Examples per second (median of repeats timed in turn); ratio = after_rnn (default model) / input_feeding
(teacher forcing 0.5), the last line.

    python benchmarks/scan_training.py            # batch 128, 20 steps per timed repeat
    python benchmarks/scan_training.py --quick    # smoke test
"""

from __future__ import annotations

import statistics
import sys

import timing
import torch

from equitune.scan.data import generate_split, hold_out_validation, input_vocabulary, output_vocabulary
from equitune.scan.model import Seq2Seq
from equitune.scan.training import batch_order, encode_pairs, make_batch, mean_target_length, sequence_loss, train_steps

TARGET = 3.0
CONTENDERS = {  # name -> (attention, source_length, teacher forcing)
    "input_feeding_tf0.5": ("input_feeding", None, 0.5),
    "input_feeding_tf1": ("input_feeding", None, 1.0),
    "after_rnn_packed": ("after_rnn", None, 1.0),
    "after_rnn_fixed9": ("after_rnn", 9, 1.0),
}
BASELINE, DEFAULT = "input_feeding_tf0.5", "after_rnn_fixed9"


class Trainer:
    """A model, its optimizer and a fixed list of batches: each call trains on all of them once."""

    def __init__(self, name: str, data, batches: list[torch.Tensor], hidden: int):
        attention, source_length, self.forcing = CONTENDERS[name]
        torch.manual_seed(0)
        self.model = Seq2Seq("lstm", len(input_vocabulary()), len(output_vocabulary()), hidden, 1, 0.1, attention,
                             source_length)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.data, self.batches = data, batches
        self.mean_length = mean_target_length(data)
        self.generator = torch.Generator().manual_seed(0)

    def loss_of(self, model, index):
        src, decoder_inputs, targets = make_batch(self.data, index)
        forcing = None if self.forcing >= 1 else torch.rand(len(index), generator=self.generator) < self.forcing
        return sequence_loss(model(src, decoder_inputs, forcing), targets, "token", self.mean_length)

    def __call__(self) -> None:
        train_steps(self.model, self.optimizer, iter(self.batches), self.loss_of, grad_clip=5.0, desc="bench")


def round_robin(contenders: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each contender, timed in turn (A, B, C, D, A, B, ...) after one warm-up each, so that a
    change in machine load hits all of them alike."""
    for run in contenders.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            times[name].append(timing.time_once(run))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="examples per batch (all contenders)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    timing.setup_threads(args)
    repeats = args.repeats or (1 if args.quick else 3)
    batch, steps, hidden = (8, 2, 16) if args.quick else (args.batch, args.steps, args.hidden)
    train, _ = hold_out_validation(generate_split("add_jump").train, 0.2, 0)
    data = encode_pairs(train)
    batches = list(batch_order(data.target_lengths, batch, steps, torch.Generator().manual_seed(0), 1))
    examples = sum(len(b) for b in batches)
    trainers = {name: Trainer(name, data, batches, hidden) for name in CONTENDERS}
    seconds = round_robin(trainers, repeats)
    rows = []
    for name in CONTENDERS:
        if name == BASELINE:
            continue
        ratio = seconds[BASELINE] / seconds[name]
        row = {
            "row_id": f"scan_pretrain_lstm{hidden}/{name}_vs_{BASELINE}/B{batch}",
            "contender": name, "baseline": BASELINE, "batch": batch, "hidden": hidden, "steps": steps,
            "examples": examples, "repeats": repeats,
            "baseline_examples_per_s": round(examples / seconds[BASELINE], 1),
            "contender_examples_per_s": round(examples / seconds[name], 1),
            "ratio": round(ratio, 3),
        }
        rows.append(row)
        print(f"{name:22s} vs {BASELINE}: {row['contender_examples_per_s']:8.1f} vs {row['baseline_examples_per_s']:8.1f} "
              f"examples/s (batch {batch}) | speed-up {row['ratio']:.2f}", flush=True)
    path = timing.record("scan_training", args, rows)
    if path:
        print(f"rows written to {path}")
    default = next(r["ratio"] for r in rows if r["contender"] == DEFAULT)
    print(timing.fmt_ratio_line(f"training examples/s, {DEFAULT} / {BASELINE}", default, f">= {TARGET}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
