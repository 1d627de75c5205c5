"""Stage `prepare_images@<dataset>`: verified source -> data/images/<dataset>.npz (train/val/test uint8 subsets)."""

from __future__ import annotations

import io
import json

import numpy as np

from equitune.images.data import prepare_dataset
from equitune.io import atomic_path
from equitune.params import load_params
from equitune.stage import argument_parser, check_in_grid, run_stage


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--dataset", required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params).images
    check_in_grid("dataset", args.dataset, params.grid.datasets)
    subsets, classes = prepare_dataset(args.dataset, params.data)
    buffer = io.BytesIO()
    np.savez(buffer, classes=np.asarray(json.dumps(list(classes))), **subsets)
    with atomic_path(f"data/images/{args.dataset}.npz") as tmp:
        tmp.write_bytes(buffer.getvalue())
    sizes = {k: int(len(v)) for k, v in subsets.items() if k.endswith("_y")}
    print(f"prepared {args.dataset}: {sizes}, images {subsets['train_x'].shape[1:]}")


if __name__ == "__main__":
    run_stage(main)
