"""Test-set metrics under the image groups: upright, per element of D4, on test images transformed by a random
element of each group (the paper's metric, for C4 and D4 and the flips), per-class accuracy, and the measured
invariance error (:func:`equitune.core.checks.equivariance_error`).

Everything is computed from the logits of the model on the test images moved by each of the 8 elements of D4
(every image group is a subgroup of it). A test image "transformed by a random element of H" gets its own seeded
draw from H (the same draws for every method, so the methods are compared on the same images); its prediction is
the logits of its own element, which is exactly the prediction on the transformed image since evaluation runs in
eval mode (no batch statistics).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ..core.groups import IMAGE_GROUPS, image_action
from .training import accuracy

__all__ = ["EVALUATION_GROUPS", "ROTATIONS", "D4_ELEMENTS", "metrics_from_logits", "random_elements"]

ROTATIONS = (0, 90, 180, 270)
EVALUATION_GROUPS = ("c4", "d4", "hflip", "vflip")
D4_ELEMENTS: tuple[str, ...] = image_action("d4").group.element_names
"""Names of the D4 elements in the order of the logits' first axis (identity, rot90, ..., vflip, ...)."""


def random_elements(group: str, count: int, seed: int) -> np.ndarray:
    """For each test image, the D4 index of its own random element of ``group`` (seeded by ``seed`` and the
    group's name, so each group has its own draw and C4's draw is the same whatever else is evaluated)."""
    elements = IMAGE_GROUPS[group]
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    return np.asarray([IMAGE_GROUPS["d4"].index(elements[i]) for i in rng.integers(0, len(elements), size=count)],
                      dtype=np.int64)


def _per_class(logits: torch.Tensor, labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    predicted = logits.argmax(dim=-1).numpy()
    return {name: float((predicted[labels == c] == c).mean()) for c, name in enumerate(class_names) if (labels == c).any()}


def metrics_from_logits(logits: torch.Tensor, labels: np.ndarray, class_names: tuple[str, ...],
                        transform_seed: int) -> dict:
    """The accuracy metrics from ``logits [8, N, K]``: row ``e`` holds the logits of the test images moved by
    D4 element ``e``."""
    if logits.dim() != 3 or logits.shape[0] != len(D4_ELEMENTS) or logits.shape[1] != len(labels):
        raise ValueError(f"expected logits [{len(D4_ELEMENTS)}, {len(labels)}, K]; got {tuple(logits.shape)}")
    labels = np.asarray(labels)
    by_element = {name: accuracy(logits[e], labels) for e, name in enumerate(D4_ELEMENTS)}
    rows = torch.arange(len(labels))
    random, per_class_random = {}, {}
    for group in EVALUATION_GROUPS:
        chosen = logits[torch.as_tensor(random_elements(group, len(labels), transform_seed)), rows]
        random[group] = accuracy(chosen, labels)
        per_class_random[group] = _per_class(chosen, labels, class_names)
    rotations = [by_element[name] for name in D4_ELEMENTS[:4]]  # identity, rot90, rot180, rot270
    return {
        "test_accuracy_upright": by_element["identity"],
        "test_accuracy_random_rotation": random["c4"],  # the paper's metric
        "test_accuracy_random": random,
        "test_accuracy_by_element": by_element,
        "test_accuracy_by_rotation": {f"accuracy_rot{a}": v for a, v in zip(ROTATIONS, rotations, strict=True)},
        "test_accuracy_rotation_spread": max(rotations) - min(rotations),
        "per_class_accuracy_upright": _per_class(logits[0], labels, class_names),
        "per_class_accuracy_random": per_class_random,
        "test_images": int(len(labels)),
    }
