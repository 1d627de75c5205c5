"""Tiny, random, offline stand-ins for the image tests: the committed images section at 32 pixels and 2 epochs, and
random 28x28 grey images with labels."""

from __future__ import annotations

import numpy as np
import yaml

from equitune.images.config import ImagesParams
from helpers.paths import ROOT


def tiny_params(depth) -> ImagesParams:
    """The committed ``images`` section, shrunk: 32-pixel inputs, 2 epochs of batch 4, ``depth`` trainable units."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["images"]
    section["resolution"] = 32
    section["train"].update(epochs=2, batch_size=4, trainable_depth=depth, lambda_hidden=8)
    section["evaluation"].update(invariance_batch=3, batch_size=4)
    return ImagesParams.model_validate(section)


def random_images(sizes: dict[str, int], classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``{split}_x`` (uint8, N x 1 x 28 x 28) and ``{split}_y`` (int64 labels below ``classes``) per split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_x"] = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
        arrays[f"{split}_y"] = rng.integers(0, classes, size=n).astype(np.int64)
    return arrays
