"""Stage `images_tune_*@<cell>`: fine-tune one backbone with one method (best epoch on the validation split), then
evaluate it on the test split -> the cell's training folder (model.pt: the whole model's best-validation weights),
its curve file (per-epoch train loss and validation accuracy, a DVC plots file) and its metrics file (the same dict
to MLflow)."""

from __future__ import annotations

from equitune.images.cached import load_cache
from equitune.images.cells import Cell, add_cell_arguments
from equitune.images.config import SCRATCH_METHODS, ImagesParams
from equitune.images.experiment import CHECKPOINT, cell_cache_description, check_distributed, run_cell
from equitune.images.methods import method_group
from equitune.images.prepared import load_prepared
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import save_torch, write_json
from equitune.pipeline.stage import add_paths, argument_parser, run_stage


def main(argv=None) -> None:
    args = add_paths(add_cell_arguments(argument_parser(__doc__)),
                     data="the prepared dataset (data/images/<dataset>.npz)",
                     cache="the frozen part's cached orbits of the dataset", out="the cell's training folder",
                     metrics="the cell's metrics file",
                     curve="the cell's per-epoch curve (a DVC plots file)").parse_args(argv)
    cell = Cell.from_arguments(args)
    # bad names exit 2 before any work: the cell against the grid, then the method against the group
    with open_stage(args, "images", ImagesParams, cell=cell, check=lambda _: method_group(cell.method, cell.group),
                    distributed_run=True) as stage:
        params, context = stage.params, stage.distribution
        data, classes = load_prepared(args.data)
        # A global batch (or an epoch's last one) smaller than the number of processes would leave a rank without
        # work: refuse before any.
        context.check_batches(params.train.batch_size, len(data["train_y"]), what="images.train.batch_size")
        check_distributed(params, context, cell.method)
        orbits = None
        if params.train.trainable_depth != "all" and cell.method not in SCRATCH_METHODS:  # gcnn reads the images
            orbits = load_cache(args.cache, cell_cache_description(params, cell.backbone))
        generator = stage.seed(cell.seed)
        context.reseed_stochastic_layers(cell.seed)
        tags = {"model": cell.backbone, "method": cell.method, "group": cell.group, "seed": cell.seed,
                "dataset": cell.dataset, "stage_kind": "tune"}
        with stage.run(tags, run_name=f"tune-{cell.name}",
                       curve=stage.curve(args.curve, "epoch", ("train_loss", "val_accuracy"))) as run:
            result = run_cell(params, cell, data, classes, orbits, generator, context.device,
                              progress=stage.is_main, context=context,
                              on_epoch=lambda r: run.log_metrics({"train_loss": r.train_loss,
                                                                  "val_accuracy": r.val_accuracy}, step=r.epoch))
            if not stage.is_main:
                return  # rank 0 alone writes outputs
            save_torch(args.out / CHECKPOINT, result.state)
            run.reference_output(args.out, "checkpoint")
            run.log_final(result.metrics)
        write_json(args.metrics, result.metrics)  # last (rank 0 only): a run that fails to close leaves none
    metrics = result.metrics
    print(f"{cell.name}: best epoch {result.metrics['training']['best_epoch']}, upright {metrics['test_accuracy_upright']:.4f}, "
          f"random C4 {metrics['test_accuracy_random']['c4']:.4f}, random D4 {metrics['test_accuracy_random']['d4']:.4f}, "
          f"invariance error {metrics['invariance_error']}")


if __name__ == "__main__":
    run_stage(main)
