"""Fine-tuning on cached features is the same model: the cached path equals the whole network on images (float64,
every method, C4 and D4, every element of D4), the orbit action is a group action, the equituned classifier on
cached orbits is exactly invariant, evaluation's shortcut gives the model's own logits, and the augmentation
baseline really trains on rotated images, on both paths.

The backbone is the real EfficientNet-Lite0 with its ImageNet weights, at 32 px and in float64; its head is scaled
up so that the logits are of order 10 (a fresh head's are ~0.1, which would make any tolerance look generous)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from equitune.core.checks import TOLERANCES, assert_equivariant, assert_not_equivariant
from equitune.core.errors import ConfigError
from equitune.core.groups import image_action
from equitune.images.backbones import ImageClassifier, build_classifier, split_features
from equitune.images.cached import CACHE_GROUP, OrbitAction, orbit_features
from equitune.images.config import BACKBONE_UNITS
from equitune.images.data import to_model_input
from equitune.images.inputs import orbit_logits
from equitune.images.methods import augment_batch, augment_orbits, build_method
from equitune.images.training import ImageBatches, OrbitBatches

RESOLUTION = 32
METHODS = ("finetune", "finetune_augment", "equitune", "lambda_equitune", "equizero")
GROUP_METHODS = ("equitune", "lambda_equitune", "equizero")


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", 10, RESOLUTION, pretrained=True).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(100.0)
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def orbits(classifier, images) -> torch.Tensor:
    """The D4 orbits of ``images`` through the classifier's frozen part at trainable depth 2."""
    frozen, _ = split_features(classifier, 2)
    return orbit_features(frozen, images, RESOLUTION, dtype=torch.float64)


def as_input(images: np.ndarray) -> torch.Tensor:
    return to_model_input(images, RESOLUTION).double()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float64 round-off, with the tolerance (and scaling) of the equivariance checks."""
    tolerance = TOLERANCES[torch.float64] * max(1.0, float(b.abs().max()))
    error = float((a - b).abs().max())
    assert error <= tolerance, f"max |difference| {error:.3g} > {tolerance:.3g}"


def cached_and_whole(classifier, method, group, depth):
    """The method on cached orbits of the frozen part, and the same method (same modules) on images."""
    group = "trivial" if method.startswith("finetune") else group
    frozen, trainable = split_features(classifier, depth)
    upper = ImageClassifier(trainable, classifier.head)
    on_orbits = build_method(method, group, upper, lambda_hidden=8, on_orbits=True).double().eval()
    whole = build_method(method, group, classifier, lambda_hidden=8,
                         lambda_net=getattr(on_orbits, "lambda_net", None)).double().eval()
    return frozen, upper, on_orbits, whole


def test_units_reproduce_the_efficientnet_forward(classifier):
    assert classifier.unit_count == BACKBONE_UNITS["efficientnet_lite0"] == 18
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    reference = EfficientNet.from_name("efficientnet-lite0", num_classes=10, image_size=RESOLUTION).double().eval()
    # Same weights: the units are the reference's own modules, so copy the classifier's trunk into it.
    units = list(classifier.features)[1:-1]
    reference._conv_stem, reference._bn0 = units[0][0], units[0][1]
    reference._blocks = nn.ModuleList(unit.block for unit in units[1:-1])
    reference._conv_head, reference._bn1 = units[-1][0], units[-1][1]
    x = torch.rand(2, 3, RESOLUTION, RESOLUTION, dtype=torch.float64)
    with torch.no_grad():
        expected = reference.extract_features(classifier.features[0](x)).mean(dim=(-2, -1))
        assert_same(classifier.features(x), expected)
    rates = [unit.drop_connect_rate for unit in units[1:-1]]
    assert rates == [0.2 * i / 16 for i in range(16)]  # stochastic depth as extract_features applies it


@pytest.mark.parametrize("depth", [0, 2, 5])
def test_split_features_composes_to_the_features(classifier, depth):
    frozen, trainable = split_features(classifier, depth)
    assert len(trainable) == depth + 1  # the trained units and the pooling
    x = torch.rand(2, 3, RESOLUTION, RESOLUTION, dtype=torch.float64)
    with torch.no_grad():
        assert_same(trainable(frozen(x)), classifier.features(x))


@pytest.mark.parametrize("depth", [-1, 19])
def test_split_features_rejects_a_depth_outside_the_backbone(classifier, depth):
    with pytest.raises(ConfigError, match="outside the backbone: it has 18 unit"):
        split_features(classifier, depth)


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("method", METHODS)
def test_cached_path_equals_the_whole_model_on_images(classifier, images, orbits, method, group):
    _, _, on_orbits, whole = cached_and_whole(classifier, method, group, depth=2)
    with torch.no_grad():
        assert_same(on_orbits(orbits), whole(as_input(images)))


@pytest.mark.slow  # 8 elements x |G| float64 passes of the whole network per method: about a minute on 2 cores
@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("method", METHODS)
def test_cached_path_equals_the_whole_model_under_every_element(classifier, images, orbits, method, group):
    _, _, on_orbits, whole = cached_and_whole(classifier, method, group, depth=2)
    x = as_input(images)
    moves, turns = OrbitAction(CACHE_GROUP), image_action(CACHE_GROUP)
    with torch.no_grad():
        for g in moves.group:  # every element: the orbit action is the image action seen through the cache
            assert_same(on_orbits(moves.apply(orbits, g)), whole(turns.apply(x, g)))


def test_cached_orbits_are_the_frozen_part_on_each_moved_image(classifier, images, orbits):
    frozen, _ = split_features(classifier, 2)
    x = as_input(images)
    action = image_action(CACHE_GROUP)
    with torch.no_grad():
        for g in action.group:
            assert_same(orbits[:, g], frozen(action.apply(x, g)))
    # the batching of the cache does not change it
    assert_same(orbit_features(frozen, images, RESOLUTION, chunk_elements=1, dtype=torch.float64), orbits)


def test_orbit_action_is_a_group_action():
    z = torch.randn(2, 8, 3, dtype=torch.float64)
    for name in ("c4", "d4", "hflip", "vflip"):
        action = OrbitAction(name)
        group = action.group
        for g in group:
            for h in group:
                # g . (h . z) = (g h) . z
                assert torch.equal(action.apply(action.apply(z, h), g), action.apply(z, group.compose(g, h)))
        assert torch.equal(action.apply(z, group.identity), z)
        rows = action.transform_all(z)
        assert torch.equal(rows, torch.stack([action.apply(z, h)[:, 0] for h in group]))


@pytest.mark.parametrize("group", ["c4", "d4", "hflip", "vflip"])
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_equituned_classifier_on_cached_orbits_is_exactly_invariant(classifier, orbits, method, group):
    _, _, on_orbits, _ = cached_and_whole(classifier, method, group, depth=2)
    assert_equivariant(on_orbits, OrbitAction(group), orbits)
    on_orbits.train()  # equizero's straight-through forward too (batch norm has no batch statistics here: eval)
    for module in on_orbits.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    assert_equivariant(on_orbits, OrbitAction(group), orbits)


def test_baseline_on_cached_orbits_is_not_invariant(classifier, orbits):
    _, _, on_orbits, _ = cached_and_whole(classifier, "finetune", "c4", depth=2)
    assert_not_equivariant(on_orbits, OrbitAction("c4"), orbits)


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("method", METHODS)
def test_evaluation_shortcut_gives_the_models_logits_under_every_element(classifier, images, orbits, method, group):
    _, upper, on_orbits, _ = cached_and_whole(classifier, method, group, depth=2)
    group = "trivial" if method.startswith("finetune") else group
    logits = orbit_logits(on_orbits, method, group, upper, orbits, batch_size=2, device=torch.device("cpu"))
    moves = OrbitAction(CACHE_GROUP)
    with torch.no_grad():
        expected = torch.stack([on_orbits(moves.apply(orbits, g)) for g in moves.group])
    assert logits.shape == (8, len(images), 10)
    assert_same(logits, expected)


def test_augmentation_baseline_trains_on_rotated_images_on_both_paths(classifier):
    images = np.random.default_rng(1).integers(0, 256, size=(16, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(16) % 10
    frozen, *_ = cached_and_whole(classifier, "finetune_augment", "c4", depth=17)  # frozen: the stem (cheap)
    orbits = orbit_features(frozen, images, RESOLUTION, dtype=torch.float64)
    index = torch.arange(16)
    # The image loader rotates each image by its own quarter turn ...
    x_augmented, _ = ImageBatches(images, labels, RESOLUTION, torch.device("cpu"), torch.Generator().manual_seed(3))(index)
    x = to_model_input(images, RESOLUTION)
    turns = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(3))
    assert set(turns.tolist()) == {0, 1, 2, 3}
    for image, augmented, k in zip(x, x_augmented, turns, strict=True):
        assert torch.equal(augmented, torch.rot90(image, int(k), dims=(-2, -1)))
    # ... and the orbit loader, with the same draws, gives the orbits of exactly those rotated images.
    z_augmented, _ = OrbitBatches(orbits, labels, torch.device("cpu"), torch.Generator().manual_seed(3))(index)
    assert_same(z_augmented, orbit_features(frozen, x_augmented, RESOLUTION, dtype=torch.float64))
    assert not torch.equal(z_augmented, orbits)
    # Without augmentation both loaders return the upright data.
    z_plain, _ = OrbitBatches(orbits, labels, torch.device("cpu"))(index)
    assert torch.equal(z_plain, orbits)


def test_augment_functions_draw_the_same_turns():
    x = torch.rand(32, 1, 8, 8)
    rotated = augment_batch(x, torch.Generator().manual_seed(5))
    orbits = image_action("d4").transform_all(x).transpose(0, 1)  # the "orbit" of each image under D4, as pixels
    moved = augment_orbits(orbits, torch.Generator().manual_seed(5))
    assert torch.equal(moved[:, 0], rotated)
