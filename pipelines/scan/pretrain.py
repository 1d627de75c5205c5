"""Stage `scan_pretrain@<split>-<rnn>-<seed>`: train the non-equivariant seq2seq model, keep the best-validation
checkpoint (exact-match accuracy on the validation hold-out)."""

from __future__ import annotations

from equitune.pipeline.context import open_stage
from equitune.pipeline.io import save_torch, write_json
from equitune.pipeline.stage import add_options, add_paths, argument_parser, run_stage
from equitune.scan.cells import ScanCell
from equitune.scan.config import ScanParams
from equitune.scan.experiment import CHECKPOINT, pretrain_cell
from equitune.scan.splits import load_split_files


def main(argv=None) -> None:
    parser = add_options(argument_parser(__doc__), split=str, rnn=str, seed=int)
    add_paths(parser, data="the split's folder (data/scan/<split>)", out="the cell's model folder",
              metrics="the cell's metrics file (curve, accuracy, cost)",
              curve="the cell's training curve (a DVC plots file)")
    args = parser.parse_args(argv)
    cell = ScanCell(args.split, args.rnn, args.seed)
    with open_stage(args, "scan", ScanParams, cell=cell, distributed_run=True) as stage:
        params, context = stage.params, stage.distribution
        # A global batch with fewer examples than processes would leave a rank without work: refuse before any.
        context.check_batches(params.pretrain_for(cell.rnn).batch_size, what="scan.pretrain.batch_size")
        data = load_split_files(args.data, params.evaluation.max_commands)
        generator = stage.seed(cell.seed)
        context.reseed_stochastic_layers(cell.seed)
        tags = {"model": f"seq2seq-{cell.rnn}", "method": "pretrain", "group": "trivial", "seed": cell.seed,
                "split": cell.split}
        with stage.run(tags, curve=stage.curve(args.curve, "examples", ("train_loss", "validation_accuracy"))) as run:
            result = pretrain_cell(params, cell, data, generator, context.device,
                                   lambda values, step: run.log_metrics(values, step=step), context)
            if not stage.is_main:
                return  # rank 0 alone writes outputs
            checkpoint, metrics = result
            save_torch(args.out / CHECKPOINT, checkpoint)
            run.reference_output(args.out, "checkpoint")
            run.log_final({k: v for k, v in metrics.items() if k != "history"})
        write_json(args.metrics, metrics)  # last (rank 0 only): a run that fails to close leaves no metrics file


if __name__ == "__main__":
    run_stage(main)
