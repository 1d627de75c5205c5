"""Right answers for the image experiment (issue 26, item 7): which group element each "random" test image got
(the documented rule, per group), the metrics on hand-made logits, the cached orbits against the pixels, the
documented tie rule of model selection, and the protocol: selection never reads the test split (poisoned test
data gives the identical selection and validation curve)."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from equitune.core.groups import IMAGE_GROUPS, image_action
from equitune.images import experiment, inputs
from equitune.images.cached import IdentitySlot, OrbitAction
from equitune.images.cells import Cell
from equitune.images.evaluation import D4_ELEMENTS, metrics_from_logits, random_elements
from equitune.images.training import fit
from helpers.images_tiny import random_images, tiny_params

D4_INDEX = {name: i for i, name in enumerate(D4_ELEMENTS)}


# ------------------------------------------------------------------------------------ random test elements
def test_d4_elements_are_in_the_documented_order():
    assert D4_ELEMENTS == ("identity", "rot90", "rot180", "rot270", "hflip", "rot90_after_hflip", "vflip",
                           "rot270_after_hflip")


@pytest.mark.parametrize("group, allowed", [
    ("c4", {"identity", "rot90", "rot180", "rot270"}), ("d4", set(D4_ELEMENTS)),
    ("hflip", {"identity", "hflip"}), ("vflip", {"identity", "vflip"}),
])
def test_each_test_image_gets_its_own_seeded_element_of_the_group(group, allowed):
    count, seed = 400, 1234
    drawn = random_elements(group, count, seed)
    # the documented rule: a generator seeded by (seed, crc32 of the group's name) picks an element of the group
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    elements = IMAGE_GROUPS[group]
    expected = [IMAGE_GROUPS["d4"].index(elements[i]) for i in rng.integers(0, len(elements), size=count)]
    assert drawn.tolist() == expected
    assert {D4_ELEMENTS[i] for i in drawn} == allowed  # every element is drawn, nothing outside the group


def test_groups_get_different_draws_and_the_draw_does_not_depend_on_the_other_groups():
    c4 = random_elements("c4", 200, 7)
    # one draw shared by every group (seeded by the seed alone) is not the documented rule
    shared = np.array([IMAGE_GROUPS["d4"].index(IMAGE_GROUPS["c4"][i]) for i in
                       np.random.default_rng(7).integers(0, 4, size=200)])
    assert not np.array_equal(c4, shared)
    assert np.array_equal(c4, random_elements("c4", 200, 7))  # the same images, whatever else is evaluated
    # the two mirror groups pick their mirror for different images
    assert not np.array_equal(random_elements("hflip", 200, 7) == 0, random_elements("vflip", 200, 7) == 0)


def test_metrics_on_hand_made_logits():
    classes = ("a", "b", "c", "d")
    n = 40
    labels = np.arange(n) % 4
    # the model is right on the images moved by the even D4 elements (identity, rot180, hflip, vflip) only
    logits = torch.zeros(8, n, 4)
    for e in range(8):
        predicted = labels if e % 2 == 0 else (labels + 1) % 4
        logits[e, np.arange(n), predicted] = 1.0
    metrics = metrics_from_logits(logits, labels, classes, transform_seed=5)
    assert metrics["test_accuracy_by_element"] == {name: float(i % 2 == 0) for i, name in enumerate(D4_ELEMENTS)}
    assert metrics["test_accuracy_by_rotation"] == {"accuracy_rot0": 1.0, "accuracy_rot90": 0.0,
                                                    "accuracy_rot180": 1.0, "accuracy_rot270": 0.0}
    assert metrics["test_accuracy_rotation_spread"] == 1.0
    assert metrics["test_accuracy_upright"] == 1.0
    for group in ("c4", "d4", "hflip", "vflip"):
        drawn = random_elements(group, n, 5)
        assert metrics["test_accuracy_random"][group] == pytest.approx(float(np.mean(drawn % 2 == 0)))
    # the paper's metric is the C4 one
    assert metrics["test_accuracy_random_rotation"] == metrics["test_accuracy_random"]["c4"]
    assert metrics["test_accuracy_random"]["c4"] != metrics["test_accuracy_random"]["d4"]  # the case tells them apart
    assert metrics["test_images"] == n


# ------------------------------------------------------------------------------------------- cached orbits
def test_orbit_action_moves_the_orbit_of_an_image_to_the_orbit_of_the_moved_image():
    d4 = image_action("d4")
    x = torch.arange(2 * 9, dtype=torch.float64).reshape(2, 1, 3, 3)
    orbit = d4.transform_all(x).movedim(0, 1)  # [B, 8, 1, 3, 3]: slot e holds e . x (frozen = identity)
    for name in ("c4", "d4", "hflip", "vflip"):
        action, group = OrbitAction(name), image_action(name)
        for g in group.group:
            moved = group.apply(x, g)
            assert torch.equal(action.apply(orbit, g), d4.transform_all(moved).movedim(0, 1)), (name, g)
    assert torch.equal(IdentitySlot(nn.Identity())(orbit), x)  # the baselines read the image itself


# ------------------------------------------------------------------------------------------- selection
class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 2))

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("scores, best", [([0.5, 0.5, 0.5], 1), ([0.2, 0.7, 0.7], 2), ([0.1, 0.3, 0.9], 3)])
def test_fit_keeps_the_best_epoch_ties_to_the_earlier_and_returns_with_its_weights(scores, best):
    torch.manual_seed(0)
    model = _Scalar()
    x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    weights, given = [], iter(scores)

    def validate(net):
        weights.append(copy.deepcopy(net.state_dict()))
        return next(given)

    result = fit(model, optimizer, [torch.arange(8)], lambda index: (x[index], y[index]), epochs=3,
                 validate=validate)
    assert result.best_epoch == best
    assert [r.val_accuracy for r in result.history] == scores
    assert torch.equal(model.w, weights[best - 1]["w"]) and torch.equal(result.best_state["w"], weights[best - 1]["w"])
    assert not torch.equal(weights[0]["w"], weights[2]["w"])


@pytest.mark.parametrize("depth", [2, "all"])
def test_selection_reads_the_validation_split_only(depth, monkeypatch):
    params, data = tiny_params(depth), random_images({"train": 8, "validation": 6, "test": 5}, 4)
    cell = Cell("fashion_mnist", "efficientnet_lite0", "finetune", "trivial", 0)
    seen = []
    real_accuracy = inputs.accuracy

    def spy(logits, labels):
        seen.append((labels is data["validation_y"], logits.shape[0]))
        return real_accuracy(logits, labels)

    monkeypatch.setattr(inputs, "accuracy", spy)

    def run(split_data, orbits):
        torch.manual_seed(0)
        return experiment.run_cell(params, cell, split_data, tuple("abcd"), orbits, torch.Generator().manual_seed(0),
                                   torch.device("cpu"))

    orbits = None
    if depth != "all":
        cache = experiment.cache_for(params, cell.backbone, data, 4)
        orbits = {s: cache[s] for s in ("train", "validation", "test")}
    clean = run(data, orbits)
    assert seen == [(True, 6), (True, 6)]  # one validation per epoch, on the 6 validation images
    # Poisoned test split: other images, labels no class has, NaN cached features. Selection must not change.
    poisoned = {**data, "test_x": np.full_like(data["test_x"], 255), "test_y": np.full_like(data["test_y"], -1)}
    poisoned_orbits = None if orbits is None else {**orbits, "test": torch.full_like(orbits["test"], float("nan"))}
    seen.clear()
    again = run(poisoned, poisoned_orbits)
    assert seen == [(True, 6), (True, 6)]
    assert again.curves == clean.curves
    for key, value in clean.state.items():
        assert torch.equal(value, again.state[key]), key
