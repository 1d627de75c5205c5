"""Stage `prepare_images@<dataset>`: verified source -> the prepared dataset (train/val/test uint8 subsets, .npz)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from equitune.images.config import ImagesParams
from equitune.images.data import prepare_dataset
from equitune.pipeline.io import atomic_path
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, check_in_grid, run_stage
from equitune.pipeline.tracking import tracked_run


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, required=True, help="the prepared file (data/images/<dataset>.npz)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params = loaded.section
    check_in_grid("dataset", args.dataset, params.grid.datasets)
    subsets, classes = prepare_dataset(args.dataset, params.data)
    buffer = io.BytesIO()
    np.savez(buffer, classes=np.asarray(json.dumps(list(classes))), **subsets)
    with tracked_run("images", profile=loaded.profile, params=params, tags={"dataset": args.dataset}) as run:
        with atomic_path(args.out) as tmp:
            tmp.write_bytes(buffer.getvalue())
        run.reference_output(args.out, "data")
    sizes = {k: int(len(v)) for k, v in subsets.items() if k.endswith("_y")}
    print(f"prepared {args.dataset}: {sizes}, images {subsets['train_x'].shape[1:]}")


if __name__ == "__main__":
    run_stage(main)
