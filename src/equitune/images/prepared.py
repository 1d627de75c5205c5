"""Reading the prepared arrays written by the `prepare_images` stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..stage import StageError

__all__ = ["load_prepared"]


def load_prepared(dataset: str, root: str | Path = "data/images") -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    path = Path(root) / f"{dataset}.npz"
    if not path.exists():
        raise StageError(f"{path} not found; run `dvc repro prepare_images@{dataset}` first")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "classes"}
        classes = tuple(json.loads(str(archive["classes"])))
    return arrays, classes
