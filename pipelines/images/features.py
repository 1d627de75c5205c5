"""Stage `features_images@<dataset>`: feature maps of the pretrained vs the equituned (C4-averaged) backbone for one
test image rotated step by step -> a PNG strip and a GIF, and their measured equivariance errors -> a metrics file.
Backbone: the first of images.grid.backbones."""

from __future__ import annotations

from pathlib import Path

from equitune.images.config import ImagesParams
from equitune.images.features import dataset_feature_frames, save_feature_figures
from equitune.images.prepared import load_prepared
from equitune.pipeline.io import write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, check_in_grid, run_stage
from equitune.pipeline.tracking import tracked_run


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset (data/images/<dataset>.npz)")
    parser.add_argument("--png", type=Path, required=True, help="the strip of frames")
    parser.add_argument("--gif", type=Path, required=True, help="the animation")
    parser.add_argument("--metrics", type=Path, required=True, help="the measured equivariance errors")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params = loaded.section
    check_in_grid("dataset", args.dataset, params.grid.datasets)
    data, classes = load_prepared(args.data)
    seed_everything(0, loaded.base.threads, loaded.base.deterministic)
    with tracked_run("images", profile=loaded.profile, params=params, tags={"dataset": args.dataset}) as run:
        result, summary = dataset_feature_frames(params, data, classes)
        save_feature_figures(result, args.png, args.gif)
        run.log_artifacts(args.png, args.gif)
        run.log_final(summary)
    write_json(args.metrics, summary)
    print(f"features of {summary['backbone']}: {result['errors']}")


if __name__ == "__main__":
    run_stage(main)
