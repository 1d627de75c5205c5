"""Stage `scan_pretrain@<split>-<cell>-<seed>`: train the non-equivariant seq2seq model, keep the best-validation
checkpoint (exact-match accuracy on the validation hold-out)."""

from __future__ import annotations

from pathlib import Path

import torch

from equitune.pipeline.curves import Curve
from equitune.pipeline.distributed import distributed, tracked_run_on_main
from equitune.pipeline.io import atomic_path, write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.scan.cells import ScanCell
from equitune.scan.config import ScanParams
from equitune.scan.experiment import CHECKPOINT, load_split_files, pretrain_cell


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--split", required=True)
    parser.add_argument("--cell", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the split's folder (data/scan/<split>)")
    parser.add_argument("--out", type=Path, required=True, help="the cell's model folder")
    parser.add_argument("--metrics", type=Path, required=True, help="the cell's metrics file (curve, accuracy, cost)")
    parser.add_argument("--curve", type=Path, required=True, help="the cell's training curve (a DVC plots file)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "scan", ScanParams)
    params, cell = loaded.section, ScanCell(args.split, args.cell, args.seed)
    cell.check(params)
    with distributed(loaded.base) as context:
        # A global batch with fewer examples than processes would leave a rank without work: refuse before any.
        context.check_batches(params.pretrain.batch_size, what="scan.pretrain.batch_size")
        data = load_split_files(args.data)
        generator = seed_everything(cell.seed, params.threads, loaded.base.deterministic)
        context.reseed_stochastic_layers(cell.seed)
        tags = {"model": f"seq2seq-{cell.cell}", "method": "pretrain", "group": "trivial", "seed": cell.seed,
                "split": cell.split}
        curve = Curve(args.curve, x="examples", y=("train_loss", "validation_accuracy")) if context.is_main else None
        with tracked_run_on_main(context, "scan", profile=loaded.profile, params=params, tags=tags,
                                 curve=curve) as run:
            result = pretrain_cell(params, cell, data, generator, context.device,
                                   lambda values, step: run.log_metrics(values, step=step), context)
            if not context.is_main:
                return  # rank 0 alone writes outputs
            checkpoint, metrics = result
            with atomic_path(args.out / CHECKPOINT) as tmp:
                torch.save(checkpoint, tmp)
            run.reference_output(args.out, "checkpoint")
            run.log_final({k: v for k, v in metrics.items() if k != "history"})
        write_json(args.metrics, metrics)  # last (rank 0 only): a run that fails to close leaves no metrics file


if __name__ == "__main__":
    run_stage(main)
