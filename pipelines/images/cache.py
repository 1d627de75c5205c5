"""Stage `images_cache@<dataset>-<backbone>`: the frozen lower units' outputs on every train/validation/test image moved by
each element of D4, computed once and shared by every method and seed -> one cache file (torch). With
images.train.trainable_depth 'all' (the whole network is trained) the file only records that."""

from __future__ import annotations

from equitune.images.config import ImagesParams
from equitune.images.experiment import cache_for
from equitune.images.prepared import load_prepared
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import save_torch
from equitune.pipeline.stage import add_options, add_paths, argument_parser, check_in_grid, run_stage


def main(argv=None) -> None:
    parser = add_options(argument_parser(__doc__), dataset=str, backbone=str)
    args = add_paths(parser, data="the prepared dataset (data/images/<dataset>.npz)",
                     out="the cache file").parse_args(argv)
    with open_stage(args, "images", ImagesParams) as stage:
        check_in_grid("dataset", args.dataset, stage.params.grid.datasets)
        check_in_grid("backbone", args.backbone, stage.params.grid.backbones)
        data, classes = load_prepared(args.data)
        stage.seed(0)
        content = cache_for(stage.params, args.backbone, data, len(classes), progress=True)
        save_torch(args.out, content)
    shapes = {k: tuple(v.shape) for k, v in content.items() if k != "description"}
    print(f"cached {args.dataset} through the frozen part of {args.backbone}: {shapes or 'nothing (whole network trained)'}")


if __name__ == "__main__":
    run_stage(main)
