"""Stage `train_images_*@<cell>`: fine-tune one backbone with one method -> the cell's training folder
(model.pt: best-validation weights; curves.json: per-epoch train loss and validation accuracy, also in MLflow)."""

from __future__ import annotations

from pathlib import Path

import torch

from equitune.images.cells import Cell, add_cell_arguments
from equitune.images.config import ImagesParams
from equitune.images.experiment import CHECKPOINT, CURVES, train_cell
from equitune.images.methods import method_group
from equitune.images.prepared import load_prepared
from equitune.pipeline.curves import Curve
from equitune.pipeline.io import atomic_path, write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, resolve_device, run_stage
from equitune.pipeline.tracking import tracked_run


def main(argv=None) -> None:
    parser = add_cell_arguments(argument_parser(__doc__))
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset (data/images/<dataset>.npz)")
    parser.add_argument("--out", type=Path, required=True, help="the cell's training folder")
    parser.add_argument("--curve", type=Path, required=True, help="the cell's per-epoch curve (a DVC plots file)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params, cell = loaded.section, Cell.from_arguments(args)
    cell.check(params)  # bad names exit 2 here, before any work
    method_group(cell.method, cell.group)
    device = resolve_device(loaded.base)
    data, classes = load_prepared(args.data)
    generator = seed_everything(cell.seed, loaded.base.threads, loaded.base.deterministic)
    tags = {"model": cell.backbone, "method": cell.method, "group": cell.group, "seed": cell.seed,
            "dataset": cell.dataset, "stage_kind": "train"}
    curve = Curve(args.curve, x="epoch", y=("train_loss", "val_accuracy"))
    with tracked_run("images", profile=loaded.profile, params=params, tags=tags, run_name=f"train-{cell.name}",
                     curve=curve) as run:
        best_state, curves = train_cell(
            params, cell, data, len(classes), generator, device,
            on_epoch=lambda r: run.log_metrics({"train_loss": r.train_loss, "val_accuracy": r.val_accuracy},
                                               step=r.epoch))
        with atomic_path(args.out / CHECKPOINT) as tmp:
            torch.save(best_state, tmp)
        write_json(args.out / CURVES, curves)
        run.log_metrics({"best_epoch": curves["best_epoch"]})
        run.reference_output(args.out, "checkpoint")
    best = curves["epochs"][curves["best_epoch"] - 1]
    print(f"{cell.name}: best epoch {curves['best_epoch']}, val accuracy {best['val_accuracy']:.4f}")


if __name__ == "__main__":
    run_stage(main)
