"""Stage `cache_images@<dataset>-<backbone>`: the frozen lower units' outputs on every train/val/test image moved by
each element of D4, computed once and shared by every method and seed -> one cache file (torch). With
images.train.trainable_depth 'all' (the whole network is trained) the file only records that."""

from __future__ import annotations

from pathlib import Path

import torch

from equitune.images.config import ImagesParams
from equitune.images.experiment import cache_for
from equitune.images.prepared import load_prepared
from equitune.pipeline.io import atomic_path
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, check_in_grid, run_stage


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset (data/images/<dataset>.npz)")
    parser.add_argument("--out", type=Path, required=True, help="the cache file")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params = loaded.section
    check_in_grid("dataset", args.dataset, params.grid.datasets)
    check_in_grid("backbone", args.backbone, params.grid.backbones)
    data, classes = load_prepared(args.data)
    seed_everything(0, loaded.base.threads, loaded.base.deterministic)

    content = cache_for(params, args.backbone, data, len(classes), progress=True)
    with atomic_path(args.out) as tmp:
        torch.save(content, tmp)
    shapes = {k: tuple(v.shape) for k, v in content.items() if k != "description"}
    print(f"cached {args.dataset} through the frozen part of {args.backbone}: {shapes or 'nothing (whole network trained)'}")


if __name__ == "__main__":
    run_stage(main)
