"""Frames and canonicalization of the image classifiers (frame, canonicalize, canonicalize_prior) and post-hoc
equitune: exactly invariant in float64 for every element of C4 and D4, on images and on cached orbits; the frame on a
cached orbit is the frame on its image; the fixed frame picks what it says on hand-made images (ties kept); training
sends one classifier call per example; the prior moves upright inputs to the identity; bad params exit 2."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.frames import lowest_score_frame
from equitune.core.groups import image_action
from equitune.images.backbones import ImageClassifier, Normalise, split_features
from equitune.images.cached import IdentitySlot, OrbitAction, orbit_features
from equitune.images.canonical import (
    PooledLinearScore,
    QuadrantMassScore,
    backbone_calls,
    identity_weight,
    prior_regulariser,
    score_head,
)
from equitune.images.config import CANONICALIZATION_METHODS, GROUP_METHODS, ImagesParams
from equitune.images.methods import build_method, new_parameters
from helpers.images_tiny import tiny_params

GROUPS = ("c4", "d4")
SIZE, FROZEN_CHANNELS = 12, 6


def classifier_and_frozen(seed: int = 0) -> tuple[ImageClassifier, nn.Module, ImageClassifier]:
    """A small float64 classifier, its frozen lower part (normalise + conv + relu: 6 maps of 5x5) and the upper
    classifier that reads those maps (sharing modules)."""
    torch.manual_seed(seed)
    features = nn.Sequential(Normalise((0.5,) * 3, (0.5,) * 3), nn.Conv2d(3, FROZEN_CHANNELS, 3, stride=2), nn.ReLU(),
                             nn.Conv2d(FROZEN_CHANNELS, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 16),
                             nn.ReLU())
    classifier = ImageClassifier(features, nn.Linear(16, 5)).double()
    frozen, trainable = split_features(classifier, classifier.unit_count - 2)  # frozen: normalise, conv, relu
    return classifier, frozen, ImageClassifier(trainable, classifier.head)


def on_images(method, group, classifier, frozen, head):
    return build_method(method, group, classifier, score_head=head, frozen=frozen)


def on_orbits(method, group, upper, head):
    return build_method(method, group, upper, on_orbits=True, score_head=head)


def learned_head(method: str, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return score_head(method, FROZEN_CHANNELS).double()


def images(count: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("method", CANONICALIZATION_METHODS)
def test_canonicalization_methods_are_exactly_invariant_on_images_and_orbits(method, group):
    classifier, frozen, upper = classifier_and_frozen()
    x = images()
    assert_not_equivariant(classifier, image_action(group), x)  # the raw classifier is not: the check can fail
    head = learned_head(method)
    model = on_images(method, group, classifier, frozen, head).eval()
    assert_equivariant(model, image_action(group), x)
    orbits = orbit_features(frozen, x, SIZE, dtype=torch.float64)
    assert_not_equivariant(IdentitySlot(upper), OrbitAction(group), orbits)
    assert_equivariant(on_orbits(method, group, upper, head).eval(), OrbitAction(group), orbits)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("method", CANONICALIZATION_METHODS)
def test_canonicalization_on_cached_orbits_equals_canonicalization_on_images(method, group):
    classifier, frozen, upper = classifier_and_frozen()
    head = learned_head(method)
    image_model = on_images(method, group, classifier, frozen, head).eval()
    orbit_model = on_orbits(method, group, upper, head).eval()
    x = images(7, seed=3)
    orbits = orbit_features(frozen, x, SIZE, dtype=torch.float64)
    action = image_action("d4")
    for g in action.group:  # every D4 element: the orbit of g.x is the cached orbit moved by g
        moved = action.apply(x, g)
        moved_orbits = OrbitAction("d4").apply(orbits, g)
        assert torch.equal(image_model.frame_mask(moved), orbit_model.frame_mask(moved_orbits))
        torch.testing.assert_close(image_model(moved), orbit_model(moved_orbits), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group", GROUPS)
def test_posthoc_equitune_of_a_finetuned_classifier_is_exactly_invariant(group):
    """The post-hoc model of a finetune cell: the classifier as trained, averaged over the group (on orbits, as the
    cell evaluates it, and on images)."""
    classifier, frozen, upper = classifier_and_frozen()
    x = images()
    assert_not_equivariant(classifier, image_action(group), x)
    assert_equivariant(build_method("equitune", group, classifier).eval(), image_action(group), x)
    orbits = orbit_features(frozen, x, SIZE, dtype=torch.float64)
    assert_equivariant(build_method("equitune", group, upper, on_orbits=True).eval(), OrbitAction(group), orbits)


def test_the_fixed_frame_picks_the_element_that_brings_the_heaviest_quadrant_to_the_top_left():
    """Right answers on hand-made images, with the identity as the frozen part: a bright top-right corner is
    brought to the top-left by one counter-clockwise quarter turn; a 180°-symmetric image ties two elements; a
    uniform image ties all four (and its average is the plain classifier's output, since all copies are equal)."""
    action = image_action("c4")
    names = action.group.element_names
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 3] = 1.0                         # top-right quadrant heaviest
    x[1, 0, 0, 0] = x[1, 0, 3, 3] = 1.0         # top-left and bottom-right: fixed by rot180
    x[2] = 0.5                                  # uniform
    assert torch.equal(torch.rot90(x[0], 1, dims=(-2, -1))[0, 0, 0], torch.tensor(1.0, dtype=torch.float64))
    model = build_method("frame", "c4", nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double(),
                         score_head=QuadrantMassScore(), frozen=nn.Identity()).eval()
    mask = model.frame_mask(x)
    frames = [[names[g] for g in range(4) if mask[g, b]] for b in range(3)]
    assert frames == [["rot90"], ["identity", "rot180"], ["identity", "rot90", "rot180", "rot270"]]
    torch.testing.assert_close(model(x[2:]), model.backbone(x[2:]))
    assert backbone_calls(model, x, 8, torch.device("cpu")) == pytest.approx((1 + 2 + 4) / 3)
    # identity's weight: 0, 1/2, 1/4
    assert identity_weight(model, x, 8, torch.device("cpu")) == pytest.approx((0 + 0.5 + 0.25) / 3)


def test_the_fixed_frame_is_equivariant():
    """F(h x) = F(x) h^-1 for every h of D4, element by element, on the cached maps' frame."""
    classifier, frozen, _ = classifier_and_frozen()
    model = on_images("frame", "d4", classifier, frozen, QuadrantMassScore()).eval()
    group = image_action("d4").group
    x = images(6, seed=5)
    frame = model.frame_mask(x)
    for h in group:
        moved = model.frame_mask(image_action("d4").apply(x, h))
        for g in group:
            assert torch.equal(moved[group.compose(g, group.inverse(h))], frame[g])


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("method", ["canonicalize", "canonicalize_prior"])
def test_training_sends_one_classifier_call_per_example_and_trains_the_score(method, group):
    _, _, upper = classifier_and_frozen()
    head = learned_head(method)
    model = on_orbits(method, group, upper, head).train()
    calls = []
    upper.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    x = images(4)
    orbits = orbit_features(classifier_and_frozen()[1], x, SIZE, dtype=torch.float64)
    loss = model(orbits).logsumexp(dim=-1).sum() + prior_regulariser(model, 0.5)(orbits)
    assert calls == [4]  # one call, one copy per example (the regulariser reads the scores only)
    loss.backward()
    assert head.linear.weight.grad is not None and float(head.linear.weight.grad.abs().sum()) > 0
    assert set(map(id, new_parameters(model, upper))) >= set(map(id, head.parameters()))


def test_the_prior_moves_upright_inputs_to_the_identity():
    """Minimising the prior alone makes the identity the lowest score of every training input."""
    _, frozen, upper = classifier_and_frozen()
    head = learned_head("canonicalize_prior", seed=2)
    model = on_orbits("canonicalize_prior", "c4", upper, head)
    orbits = orbit_features(frozen, images(4), SIZE, dtype=torch.float64)
    regulariser = prior_regulariser(model, 1.0)
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    with torch.no_grad():
        before = float(regulariser(orbits))
        assert not bool(lowest_score_frame(model.scores(orbits))[0].all())  # not already true at the start
    for _ in range(500):
        optimizer.zero_grad()
        regulariser(orbits).backward()
        optimizer.step()
    with torch.no_grad():
        assert float(regulariser(orbits)) < before
        assert bool(lowest_score_frame(model.scores(orbits))[0].all())
    assert identity_weight(model.eval(), orbits, 4, torch.device("cpu")) == 1.0


def test_a_negative_prior_weight_is_refused():
    with pytest.raises(ValueError, match="prior weight must be >= 0"):
        prior_regulariser(None, -0.1)


def test_params_reject_a_negative_prior_weight_and_list_the_methods():
    section = tiny_params(2).model_dump()
    section["train"]["canonicalization_prior_weight"] = -1.0
    with pytest.raises(ValidationError, match="canonicalization_prior_weight"):
        ImagesParams.model_validate(section)
    section["train"]["canonicalization_prior_weight"] = 0.0
    section["grid"]["group_methods"] = ["canonicalise"]
    with pytest.raises(ValidationError) as error:
        ImagesParams.model_validate(section)
    allowed = ", ".join(map(repr, GROUP_METHODS[:-1])) + f" or {GROUP_METHODS[-1]!r}"
    assert f"grid.group_methods.0\n  Input should be {allowed}" in str(error.value)
    assert "input_value='canonicalise'" in str(error.value)


def test_score_heads():
    assert isinstance(score_head("canonicalize", 3), PooledLinearScore)
    assert not list(score_head("frame", 3).parameters())  # fixed
    with pytest.raises(ValueError, match="not a canonicalization method"):
        score_head("equitune", 3)
    with pytest.raises(ValueError, match="needs score_head"):
        build_method("canonicalize", "c4", classifier_and_frozen()[0])


CLASSES = tuple("abcd")


@pytest.fixture(scope="module")
def tiny_data():
    from helpers.images_tiny import random_images

    return random_images({"train": 12, "validation": 6, "test": 6}, len(CLASSES))


@pytest.mark.parametrize("depth, method, group", [(2, "finetune", "trivial"), (2, "frame", "d4"),
                                                  (2, "canonicalize_prior", "c4"), ("all", "canonicalize", "c4")])
def test_cell_writes_cost_and_canonicalization_metrics_and_saves_the_whole_model(tiny_data, depth, method, group):
    """One cell on cached orbits (the scorer reads the frozen maps) or on images (trainable_depth 'all': the scorer
    reads the normalised image): the new metrics are present and sane, the post-hoc models of a finetune cell are
    invariant, and the saved whole model on images gives the logits the metrics came from."""
    from equitune.images.backbones import build_classifier
    from equitune.images.cells import Cell
    from equitune.images.evaluation import metrics_from_logits
    from equitune.images.experiment import POSTHOC_METHOD, _channels, cache_for, run_cell
    from equitune.images.inputs import image_logits

    params = tiny_params(depth)
    cell = Cell("fashion_mnist", "efficientnet_lite0", method, group, 0)
    torch.manual_seed(0)
    cache = cache_for(params, cell.backbone, tiny_data, len(CLASSES))
    orbits = None if depth == "all" else {s: cache[s] for s in ("train", "validation", "test")}
    result = run_cell(params, cell, tiny_data, CLASSES, orbits, torch.Generator().manual_seed(0), torch.device("cpu"))
    metrics = result.metrics
    assert metrics["training"]["seconds"] > 0 and metrics["inference"]["images_per_second"] > 0
    calls = metrics["inference"]["backbone_calls_per_image"]
    if method == "finetune":
        assert calls == 1 and set(metrics[POSTHOC_METHOD]) == set(GROUPS)
        for g, posthoc in metrics[POSTHOC_METHOD].items():
            assert posthoc["invariance_error"][g] < 1e-4  # float32 round-off
            assert posthoc["inference"]["backbone_calls_per_image"] == image_action(g).group.order
            assert posthoc["test_accuracy_rotation_spread"] == 0
        assert metrics["invariance_error"]["c4"] > 1e-3  # the fine-tuned classifier itself is not invariant
    else:
        assert POSTHOC_METHOD not in metrics
        assert 1 <= calls <= image_action(group).group.order
        assert 0 <= metrics["inference"]["identity_weight_upright"] <= 1
        assert metrics["invariance_error"][group] < 1e-4
    classifier = build_classifier(cell.backbone, len(CLASSES), 32, pretrained=False)
    frozen, _ = split_features(classifier, classifier.unit_count if depth == "all" else depth)
    head = score_head(method, _channels(frozen, 32)) if method in CANONICALIZATION_METHODS else None
    whole = build_method(method, group, classifier, score_head=head, frozen=frozen)
    whole.load_state_dict(result.state)
    logits = image_logits(whole, tiny_data["test_x"], 32, 4, torch.device("cpu"))
    again = metrics_from_logits(logits, tiny_data["test_y"], CLASSES, params.evaluation.rotation_seed)
    for key in ("test_accuracy_by_element", "test_accuracy_random"):
        assert again[key] == metrics[key], key


@pytest.mark.parametrize("key, value, fragment", [
    ("train", {"canonicalization_prior_weight": -0.5}, "images.train.canonicalization_prior_weight"),
    ("grid", {"group_methods": ["canonicalise"]}, "images.grid.group_methods[0]: Input should be 'equitune', "),
])
def test_tune_stage_exits_2_on_bad_canonicalization_params_before_any_work(tmp_path, monkeypatch, capsys, key, value,
                                                                             fragment):
    import yaml

    from equitune.pipeline.stage import run_stage
    from helpers.paths import ROOT, stage_argv, stage_main

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["images"][key].update(value)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    argv = stage_argv("images_tune_group@fashion_mnist-efficientnet_lite0-equitune-c4-0")
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage_main("images/tune"), [*argv, "--params", str(params)])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
