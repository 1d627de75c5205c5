"""One grid cell end to end in-process, on both inputs: the whole network on images (trainable_depth 'all', the
paper's path) and the top units on cached orbits. The saved model is the whole model on images: loaded into a fresh
network it gives the test logits the cell's metrics were computed from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equitune.images.backbones import build_classifier
from equitune.images.cells import Cell
from equitune.images.evaluation import D4_ELEMENTS, metrics_from_logits
from equitune.images.experiment import cache_for, run_cell
from equitune.images.inputs import image_logits
from equitune.images.methods import build_method
from helpers.images_tiny import random_images, tiny_params

CLASSES = tuple("abcd")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return random_images({"train": 12, "validation": 6, "test": 6}, len(CLASSES))


SLOW = pytest.mark.slow  # the whole network on images, |G| copies: ~10 s each under load


@pytest.mark.parametrize("depth, method, group", [
    (2, "finetune_augment", "trivial"), (2, "lambda_equitune", "d4"), (2, "equizero", "c4"),
    ("all", "equizero", "c4"),
    pytest.param("all", "finetune_augment", "trivial", marks=SLOW), pytest.param("all", "lambda_equitune", "d4", marks=SLOW),
])
def test_cell_trains_evaluates_and_saves_the_whole_model(data, depth, method, group):
    params = tiny_params(depth)
    cell = Cell("fashion_mnist", "efficientnet_lite0", method, group, 0)
    torch.manual_seed(0)
    cache = cache_for(params, cell.backbone, data, len(CLASSES))
    orbits = None if depth == "all" else {s: cache[s] for s in ("train", "validation", "test")}
    assert (orbits is None) == ("train" not in cache)
    result = run_cell(params, cell, data, CLASSES, orbits, torch.Generator().manual_seed(0), torch.device("cpu"))
    metrics = result.metrics
    assert len(result.curves["epochs"]) == 2 and 1 <= result.curves["best_epoch"] <= 2
    assert set(metrics["test_accuracy_by_element"]) == set(D4_ELEMENTS)
    assert set(metrics["test_accuracy_random"]) == {"c4", "d4", "hflip", "vflip"}
    if group != "trivial":
        assert metrics["invariance_error"][group] < 1e-4  # float32 round-off
        assert set(metrics["invariance_error"]) == {"c4", "d4", group}
    # The saved state is the whole model on images: a fresh network with it reproduces the test logits.
    torch.manual_seed(1)
    whole = build_method(method, group, build_classifier(cell.backbone, len(CLASSES), 32, pretrained=False),
                         lambda_hidden=8)
    whole.load_state_dict(result.state)
    logits = image_logits(whole, data["test_x"], 32, 4, torch.device("cpu"))
    again = metrics_from_logits(logits, data["test_y"], CLASSES, params.evaluation.rotation_seed)
    for key in ("test_accuracy_by_element", "test_accuracy_random", "per_class_accuracy_upright"):
        assert again[key] == metrics[key], key
