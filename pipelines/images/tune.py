"""Stage `tune_images_*@<cell>`: fine-tune one backbone with one method (best epoch on the validation split), then
evaluate it on the test split -> the cell's training folder (model.pt: the whole model's best-validation weights;
curves.json: per-epoch train loss and validation accuracy) and its metrics file (the same dict to MLflow)."""

from __future__ import annotations

from pathlib import Path

import torch

from equitune.images.cached import load_cache
from equitune.images.cells import Cell, add_cell_arguments
from equitune.images.config import ImagesParams
from equitune.images.experiment import CHECKPOINT, CURVES, cell_cache_description, check_distributed, run_cell
from equitune.images.methods import method_group
from equitune.images.prepared import load_prepared
from equitune.pipeline.curves import Curve
from equitune.pipeline.distributed import distributed, tracked_run_on_main
from equitune.pipeline.io import atomic_path, write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, run_stage


def main(argv=None) -> None:
    parser = add_cell_arguments(argument_parser(__doc__))
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset (data/images/<dataset>.npz)")
    parser.add_argument("--cache", type=Path, required=True, help="the frozen part's cached orbits of the dataset")
    parser.add_argument("--out", type=Path, required=True, help="the cell's training folder")
    parser.add_argument("--metrics", type=Path, required=True, help="the cell's metrics file")
    parser.add_argument("--curve", type=Path, required=True, help="the cell's per-epoch curve (a DVC plots file)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params, cell = loaded.section, Cell.from_arguments(args)
    cell.check(params)  # bad names exit 2 here, before any work
    method_group(cell.method, cell.group)
    with distributed(loaded.base) as context:
        data, classes = load_prepared(args.data)
        # A global batch (or an epoch's last one) smaller than the number of processes would leave a rank without
        # work: refuse before any.
        context.check_batches(params.train.batch_size, len(data["train_y"]), what="images.train.batch_size")
        check_distributed(params, context)
        orbits = None
        if params.train.trainable_depth != "all":
            orbits = load_cache(args.cache, cell_cache_description(params, cell.backbone))
        generator = seed_everything(cell.seed, loaded.base.threads, loaded.base.deterministic)
        context.reseed_stochastic_layers(cell.seed)
        tags = {"model": cell.backbone, "method": cell.method, "group": cell.group, "seed": cell.seed,
                "dataset": cell.dataset, "stage_kind": "tune"}
        curve = Curve(args.curve, x="epoch", y=("train_loss", "val_accuracy")) if context.is_main else None
        with tracked_run_on_main(context, "images", profile=loaded.profile, params=params, tags=tags,
                                 run_name=f"tune-{cell.name}", curve=curve) as run:
            result = run_cell(params, cell, data, classes, orbits, generator, context.device,
                              progress=context.is_main, context=context,
                              on_epoch=lambda r: run.log_metrics({"train_loss": r.train_loss,
                                                                  "val_accuracy": r.val_accuracy}, step=r.epoch))
            if not context.is_main:
                return  # rank 0 alone writes outputs
            with atomic_path(args.out / CHECKPOINT) as tmp:
                torch.save(result.state, tmp)
            write_json(args.out / CURVES, result.curves)
            run.reference_output(args.out, "checkpoint")
            run.log_final(result.metrics)
        write_json(args.metrics, result.metrics)  # last (rank 0 only): a run that fails to close leaves none
    metrics = result.metrics
    print(f"{cell.name}: best epoch {result.curves['best_epoch']}, upright {metrics['test_accuracy_upright']:.4f}, "
          f"random C4 {metrics['test_accuracy_random']['c4']:.4f}, random D4 {metrics['test_accuracy_random']['d4']:.4f}, "
          f"invariance error {metrics['invariance_error']}")


if __name__ == "__main__":
    run_stage(main)
