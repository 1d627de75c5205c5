"""Methods and backbones of the image experiment: exact invariance of every group method for every group
(float64, small random backbone), float32 invariance on the real efficientnet_lite0, the registry with generic
heads, and the baselines (which must NOT be invariant, or the invariance test could not fail)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.errors import ConfigError
from equitune.core.groups import image_action
from equitune.images.backbones import BACKBONES, ImageClassifier, Normalise, build_classifier
from equitune.images.config import BACKBONE_UNITS
from equitune.images.methods import augment_batch, build_method, method_group

GROUPS = ("c4", "d4", "hflip", "vflip")
GROUP_METHODS = ("equitune", "lambda_equitune", "equizero")


def small_classifier(num_classes: int = 5) -> ImageClassifier:
    torch.manual_seed(0)
    features = nn.Sequential(Normalise((0.5,) * 3, (0.5,) * 3), nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(),
                             nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(16), nn.ReLU())
    features(torch.zeros(1, 3, 12, 12))  # materialise the lazy layer
    return ImageClassifier(features, nn.Linear(16, num_classes))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_methods_are_exactly_invariant_in_float64(method, group):
    model = build_method(method, group, small_classifier(), lambda_hidden=8).double().eval()
    x = torch.rand(6, 1, 12, 12, dtype=torch.float64)
    assert_equivariant(model, image_action(group), x)
    # ... and under training mode too (equizero's straight-through forward is the selected output).
    model.train()
    assert_equivariant(model, image_action(group), x)


def test_baseline_is_not_invariant_so_the_check_can_fail():
    model = build_method("finetune", "trivial", small_classifier()).double().eval()
    assert_not_equivariant(model, image_action("c4"), torch.rand(6, 1, 12, 12, dtype=torch.float64))


def test_lambda_equitune_weights_are_positive_and_depend_on_the_copy():
    model = build_method("lambda_equitune", "c4", small_classifier(), lambda_hidden=8).double().eval()
    _, weights = model.outputs_and_weights(torch.rand(3, 1, 12, 12, dtype=torch.float64))
    assert weights.shape == (4, 3) and bool((weights > 0).all())
    assert torch.allclose(weights.sum(0), torch.ones(3, dtype=torch.float64))
    assert float(weights.std(0).max()) > 0  # a learned lambda, not the uniform equitune average


def test_lambda_equitune_trains_the_classifier_head_and_lambda_net():
    classifier = small_classifier()
    model = build_method("lambda_equitune", "c4", classifier, lambda_hidden=8)
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("head.") for n in names) and any(n.startswith("lambda_net.") for n in names)
    assert any(n.startswith("backbone.") for n in names)


def test_method_group_rules():
    assert method_group("finetune", "trivial") == "trivial"
    with pytest.raises(ConfigError, match="ignores the group"):
        method_group("finetune_augment", "c4")
    with pytest.raises(ConfigError, match="needs a non-trivial group"):
        method_group("equitune", "trivial")
    with pytest.raises(ConfigError, match="unknown method 'equi_tune'"):
        method_group("equi_tune", "c4")


def test_augment_batch_rotates_each_image_by_a_quarter_turn():
    x = torch.rand(64, 1, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    turns = []
    for original, rotated in zip(x, out, strict=True):
        matches = [k for k in range(4) if torch.equal(torch.rot90(original, k, dims=(-2, -1)), rotated)]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}


# ------------------------------------------------------------------ registry
@pytest.mark.slow  # builds four ImageNet-size networks (random weights): tens of seconds on 2 cores
@pytest.mark.parametrize("name", ["alexnet", "resnet18", "vgg11_bn", "densenet121"])
def test_registry_builds_torchvision_backbones_with_a_generic_head(name):
    torch.manual_seed(0)
    model = build_classifier(name, num_classes=7, image_size=64, pretrained=False).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))  # grey input is repeated to 3 channels
    assert logits.shape == (2, 7)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    # the original ImageNet classifier is gone: no other Linear has 1000 outputs
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.modules())
    assert model.features(torch.rand(1, 3, 64, 64)).shape == (1, model.head.in_features)
    assert model.unit_count == BACKBONE_UNITS[name] == 1  # the params check of trainable_depth counts the same


def test_registry_unknown_name_lists_the_registry():
    with pytest.raises(ConfigError) as error:
        build_classifier("resnet19", 10, 32, pretrained=False)
    assert "resnet19" in str(error.value) and all(name in str(error.value) for name in BACKBONES)


@pytest.mark.slow
def test_efficientnet_lite0_pretrained_head_and_float32_invariance():
    torch.manual_seed(0)
    classifier = build_classifier("efficientnet_lite0", num_classes=10, image_size=32, pretrained=True)
    assert classifier.head.in_features == 1280 and classifier.head.out_features == 10
    # ImageNet weights really loaded: the stem differs from a random initialisation with the same seed.
    torch.manual_seed(0)
    random_init = build_classifier("efficientnet_lite0", num_classes=10, image_size=32, pretrained=False)
    stem = "features.1.0.weight"  # the stem's convolution, the first unit
    assert not torch.allclose(classifier.state_dict()[stem], random_init.state_dict()[stem])
    x = torch.rand(4, 1, 32, 32)
    for group in ("c4", "d4"):
        model = build_method("equitune", group, classifier).eval()
        assert_equivariant(model, image_action(group), x)  # float32: round-off of a deep network
    assert_not_equivariant(classifier.eval(), image_action("c4"), x)
