"""Stage `evaluate_images_*@<cell>`: test accuracy upright / per rotation / randomly rotated, per-class accuracy and
the invariance error of one trained model -> the cell's metrics file (the same dict to MLflow)."""

from __future__ import annotations

from pathlib import Path

from equitune.images.cells import Cell, add_cell_arguments
from equitune.images.config import ImagesParams
from equitune.images.experiment import evaluate_cell
from equitune.images.methods import method_group
from equitune.images.prepared import load_prepared
from equitune.pipeline.io import write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, resolve_device, run_stage
from equitune.pipeline.tracking import tracked_run


def main(argv=None) -> None:
    parser = add_cell_arguments(argument_parser(__doc__))
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset (data/images/<dataset>.npz)")
    parser.add_argument("--model", type=Path, required=True, help="the cell's training folder")
    parser.add_argument("--metrics", type=Path, required=True, help="the cell's metrics file")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params, cell = loaded.section, Cell.from_arguments(args)
    cell.check(params)
    method_group(cell.method, cell.group)
    device = resolve_device(loaded.base)
    data, classes = load_prepared(args.data)
    seed_everything(cell.seed, loaded.base.threads, loaded.base.deterministic)
    metrics = evaluate_cell(params, cell, args.model, data, classes, device)
    tags = {"model": cell.backbone, "method": cell.method, "group": cell.group, "seed": cell.seed,
            "dataset": cell.dataset, "stage_kind": "evaluate"}
    with tracked_run("images", profile=loaded.profile, params=params, tags=tags,
                     run_name=f"evaluate-{cell.name}") as run:
        run.log_final(metrics)
        write_json(args.metrics, metrics)
    print(f"{cell.name}: upright {metrics['test_accuracy_upright']:.4f}, random rotation "
          f"{metrics['test_accuracy_random_rotation']:.4f}, invariance error {metrics['invariance_error']}")


if __name__ == "__main__":
    run_stage(main)
