"""Test-set evaluation under rotations: upright, each quarter turn, randomly rotated (the paper's metric),
per-class accuracy, and the measured invariance error (:func:`equitune.core.checks.equivariance_error`).

The randomly rotated test set draws one quarter turn per image from ``rotation_seed``; its predictions are taken
from the four rotated passes (each image's logits at its own angle), which is exactly the prediction on the rotated
image because evaluation runs in eval mode (no batch statistics), at a quarter of the cost of a fifth pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.checks import equivariance_error
from ..core.groups import image_action
from .data import to_model_input
from .training import accuracy, predict_logits

__all__ = ["ROTATIONS", "evaluate_rotations", "random_quarter_turns"]

ROTATIONS = (0, 90, 180, 270)


def random_quarter_turns(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=count)


def _per_class(logits: torch.Tensor, labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    predicted = logits.argmax(dim=-1).numpy()
    return {name: float((predicted[labels == c] == c).mean()) for c, name in enumerate(class_names) if (labels == c).any()}


def evaluate_rotations(model: nn.Module, test_x: np.ndarray, test_y: np.ndarray, class_names: tuple[str, ...], *,
                       resolution: int, batch_size: int, rotation_seed: int, invariance_batch: int,
                       groups: tuple[str, ...], device: torch.device,
                       autocast_dtype: torch.dtype | None = None) -> dict:
    """Every test metric of one trained model (the dict written to metrics/images/<cell>.json)."""
    logits = torch.stack([predict_logits(model, test_x, resolution, batch_size, device, k, autocast_dtype) for k in range(4)])
    turns = random_quarter_turns(len(test_y), rotation_seed)
    random_logits = logits[torch.as_tensor(turns), torch.arange(len(test_y))]
    by_rotation = {f"accuracy_rot{angle}": accuracy(logits[k], test_y) for k, angle in enumerate(ROTATIONS)}
    metrics = {
        "test_accuracy_upright": by_rotation["accuracy_rot0"],
        "test_accuracy_random_rotation": accuracy(random_logits, test_y),
        "test_accuracy_by_rotation": by_rotation,
        "test_accuracy_rotation_spread": max(by_rotation.values()) - min(by_rotation.values()),
        "per_class_accuracy_upright": _per_class(logits[0], test_y, class_names),
        "per_class_accuracy_random_rotation": _per_class(random_logits, test_y, class_names),
        "test_images": int(len(test_y)),
    }
    # Invariance error in the evaluation dtype (float32): max |f(g x) - f(x)| over g and a batch of test images.
    was_training = model.training
    model.eval()
    batch = to_model_input(test_x[:invariance_batch], resolution).to(device)
    metrics["invariance_error"] = {
        name: equivariance_error(model, image_action(name), batch) for name in groups
    }
    model.train(was_training)
    return metrics
