"""One grid cell end to end in-process, on both inputs: the whole network on images (trainable_depth 'all', the
paper's path) and the top units on cached orbits. The saved model is the whole model on images: loaded into a fresh
network it gives the test logits the cell's metrics were computed from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from equitune.images.backbones import build_classifier
from equitune.images.cells import Cell
from equitune.images.config import ImagesParams
from equitune.images.evaluation import D4_ELEMENTS, metrics_from_logits
from equitune.images.experiment import cache_for, image_logits, run_cell
from equitune.images.methods import build_method
from helpers.paths import ROOT

CLASSES = tuple("abcd")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "val": 6, "test": 6}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_x"] = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
        arrays[f"{split}_y"] = rng.integers(0, len(CLASSES), size=n).astype(np.int64)
    return arrays


def tiny_params(depth) -> ImagesParams:
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["images"]
    section["resolution"] = 32
    section["train"].update(epochs=2, batch_size=4, trainable_depth=depth, lambda_hidden=8)
    section["evaluation"].update(invariance_batch=3, batch_size=4)
    return ImagesParams.model_validate(section)


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
    orbits = None if depth == "all" else {s: cache[s] for s in ("train", "val", "test")}
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
