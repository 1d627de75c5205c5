"""Stage `images_features@<dataset>`: feature maps of the pretrained vs the equituned (C4-averaged) backbone for one
test image rotated step by step -> a PNG strip and a GIF, and their measured equivariance errors -> a metrics file.
Backbone: the first of images.grid.backbones."""

from __future__ import annotations

from equitune.images.config import ImagesParams
from equitune.images.features import dataset_feature_frames, save_feature_figures
from equitune.images.prepared import load_prepared
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_json
from equitune.pipeline.stage import add_options, add_paths, argument_parser, check_in_grid, run_stage


def main(argv=None) -> None:
    parser = add_options(argument_parser(__doc__), dataset=str)
    args = add_paths(parser, data="the prepared dataset (data/images/<dataset>.npz)", png="the strip of frames",
                     gif="the animation", metrics="the measured equivariance errors").parse_args(argv)
    with open_stage(args, "images", ImagesParams) as stage:
        check_in_grid("dataset", args.dataset, stage.params.grid.datasets)
        data, classes = load_prepared(args.data)
        stage.seed(0)
        with stage.run({"dataset": args.dataset}) as run:
            result, summary = dataset_feature_frames(stage.params, data, classes)
            save_feature_figures(result, args.png, args.gif)
            run.log_artifacts(args.png, args.gif)
            run.log_final(summary)
    write_json(args.metrics, summary)
    print(f"features of {summary['backbone']}: {result['errors']}")


if __name__ == "__main__":
    run_stage(main)
