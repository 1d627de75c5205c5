"""Reading the prepared arrays written by the `images_prepare` stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import DataError

__all__ = ["load_prepared"]


def load_prepared(path: str | Path) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """(arrays train_x/train_y/validation_x/validation_y/test_x/test_y, class names) of a prepared ``<dataset>.npz``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found; run `dvc repro images_prepare@{path.stem}` first")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "classes"}
        classes = tuple(json.loads(str(archive["classes"])))
    return arrays, classes
