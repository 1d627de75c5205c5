"""Stage `images_prepare@<dataset>`: verified source -> the prepared dataset (train/validation/test uint8 subsets,
.npz)."""

from __future__ import annotations

import io
import json

import numpy as np

from equitune.images.config import ImagesParams
from equitune.images.data import prepare_dataset
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import atomic_path
from equitune.pipeline.stage import add_options, add_paths, argument_parser, check_in_grid, run_stage


def main(argv=None) -> None:
    parser = add_options(argument_parser(__doc__), dataset=str)
    args = add_paths(parser, out="the prepared file (data/images/<dataset>.npz)").parse_args(argv)
    with open_stage(args, "images", ImagesParams) as stage:
        check_in_grid("dataset", args.dataset, stage.params.grid.datasets)
        subsets, classes = prepare_dataset(args.dataset, stage.params.data)
        buffer = io.BytesIO()
        np.savez(buffer, classes=np.asarray(json.dumps(list(classes))), **subsets)
        with stage.run({"dataset": args.dataset}) as run:
            with atomic_path(args.out) as tmp:
                tmp.write_bytes(buffer.getvalue())
            run.reference_output(args.out, "data")
    sizes = {k: int(len(v)) for k, v in subsets.items() if k.endswith("_y")}
    print(f"prepared {args.dataset}: {sizes}, images {subsets['train_x'].shape[1:]}")


if __name__ == "__main__":
    run_stage(main)
