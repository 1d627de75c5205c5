"""The two input kinds a grid cell trains and is evaluated on, one class each behind one protocol.

- :class:`ImageInputs`: the images, moved by the group on the fly (``trainable_depth: all``, the paper; and the
  from-scratch ``gcnn``);
- :class:`OrbitInputs`: the cached D4 orbits of the frozen lower units (``trainable_depth``: a number of top units),
  computed once by the cache stage (:mod:`equitune.images.cached`).

Each owns what differs between them: how a method is built on that input (:func:`build_method` on images, or
``on_orbits``), the training batches, the validation score that selects the best epoch, the test logits under every
element of D4 and the test inputs the evaluation probes. What is the same for both (training, metrics) is written
once, in :mod:`equitune.images.experiment`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.groups import image_action
from .backbones import ImageClassifier, split_features
from .cached import OrbitAction
from .config import CANONICALIZATION_METHODS, ImagesParams
from .data import to_model_input
from .evaluation import D4_ELEMENTS
from .methods import build_method
from .training import Batch, ImageBatches, OrbitBatches, accuracy, predict

__all__ = ["CellInputs", "ImageInputs", "OrbitInputs", "cell_inputs", "image_logits", "moved_orbit_logits",
           "orbit_logits", "slot_features"]


class CellInputs(Protocol):
    """What a cell reads, for one input kind: the method's model on it, its batches, validation and test inputs."""

    on_orbits: bool
    """The method's inputs are cached orbits (:func:`build_method`'s ``on_orbits``)."""
    data: dict[str, np.ndarray]
    """The prepared arrays (labels of every split; images too)."""
    device: torch.device
    autocast: torch.dtype | None
    """Mixed precision of the measured inference speed (and, on images, of validation and test logits)."""
    prepare: Callable[[object], torch.Tensor] | None
    """Turns a slice of :attr:`test` into the model's input (None: it already is)."""

    @property
    def test(self) -> np.ndarray | torch.Tensor: ...

    def build(self, method: str, group: str, classifier: ImageClassifier, frozen: nn.Module,
              scores: nn.Module | None, lambda_args: dict) -> tuple[nn.Module, ImageClassifier]: ...

    def posthoc(self, group: str, upper: ImageClassifier) -> nn.Module: ...

    def training_batches(self, augment: torch.Generator | None) -> Callable[[torch.Tensor], Batch]: ...

    def validate(self, model: nn.Module) -> float: ...

    def test_logits(self, model: nn.Module, method: str, group: str, upper: ImageClassifier | None,
                    equizero_proxy: str) -> torch.Tensor: ...

    def probe(self, count: int) -> torch.Tensor: ...

    def action(self, group: str): ...


class ImageInputs:
    """The images: the whole model reads them, moved by :func:`image_action`; uint8 -> float at
    ``images.resolution`` as they are read."""

    on_orbits = False

    def __init__(self, params: ImagesParams, data: dict[str, np.ndarray], device: torch.device,
                 autocast: torch.dtype | None):
        self.data, self.resolution, self.batch_size = data, params.resolution, params.evaluation.batch_size
        self.device, self.autocast = device, autocast

    @property
    def test(self) -> np.ndarray:
        return self.data["test_x"]

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        return to_model_input(images, self.resolution)

    def build(self, method: str, group: str, classifier: ImageClassifier, frozen: nn.Module,
              scores: nn.Module | None, lambda_args: dict) -> tuple[nn.Module, ImageClassifier]:
        """``(model, trained classifier)``: the method around the whole classifier, which trains (and is what the
        optimizer counts as pretrained)."""
        return build_method(method, group, classifier, score_head=scores, frozen=frozen, **lambda_args), classifier

    def posthoc(self, group: str, upper: ImageClassifier) -> nn.Module:
        """The trained classifier averaged over ``group`` at test time only."""
        return build_method("equitune", group, upper, on_orbits=False)

    def training_batches(self, augment: torch.Generator | None = None) -> ImageBatches:
        return ImageBatches(self.data["train_x"], self.data["train_y"], self.resolution, self.device, augment)

    def validate(self, model: nn.Module) -> float:
        """Accuracy on the upright validation images (model selection)."""
        logits = predict(model, self.data["validation_x"], self.batch_size, device=self.device,
                         autocast=self.autocast, prepare=self.prepare)
        return accuracy(logits, self.data["validation_y"])

    def test_logits(self, model: nn.Module, method: str, group: str, upper: ImageClassifier | None,
                    equizero_proxy: str) -> torch.Tensor:
        return image_logits(model, self.test, self.resolution, self.batch_size, self.device, self.autocast)

    def probe(self, count: int) -> torch.Tensor:
        """The first ``count`` test images, as the model reads them, on the device."""
        return self.prepare(self.test[slice(0, count)]).to(self.device)

    def action(self, group: str):
        return image_action(group)


class OrbitInputs:
    """The cached D4 orbits ``[N, 8, ...]`` of each split: the top units (and the method around them) read them,
    moved by :class:`OrbitAction`."""

    on_orbits = True
    prepare = None

    def __init__(self, params: ImagesParams, data: dict[str, np.ndarray], orbits: dict[str, torch.Tensor],
                 device: torch.device, autocast: torch.dtype | None):
        self.data, self.orbits, self.depth = data, orbits, params.train.trainable_depth
        self.batch_size, self.device, self.autocast = params.evaluation.batch_size, device, autocast
        self._features: torch.Tensor | None = None

    @property
    def test(self) -> torch.Tensor:
        return self.orbits["test"]

    def build(self, method: str, group: str, classifier: ImageClassifier, frozen: nn.Module,
              scores: nn.Module | None, lambda_args: dict) -> tuple[nn.Module, ImageClassifier]:
        """``(model, trained classifier)``: the method around the top units and the head (the upper classifier,
        sharing its modules with ``classifier``), on orbits."""
        _, trainable = split_features(classifier, self.depth)
        upper = ImageClassifier(trainable, classifier.head)
        return build_method(method, group, upper, on_orbits=True, score_head=scores, **lambda_args), upper

    def posthoc(self, group: str, upper: ImageClassifier) -> nn.Module:
        """The trained upper classifier averaged over ``group`` at test time only."""
        return build_method("equitune", group, upper, on_orbits=True)

    def training_batches(self, augment: torch.Generator | None = None) -> OrbitBatches:
        return OrbitBatches(self.orbits["train"], self.data["train_y"], self.device, augment)

    def validate(self, model: nn.Module) -> float:
        """Accuracy on the orbits of the upright validation images (model selection)."""
        return accuracy(predict(model, self.orbits["validation"], self.batch_size, device=self.device),
                        self.data["validation_y"])

    def test_logits(self, model: nn.Module, method: str, group: str, upper: ImageClassifier | None,
                    equizero_proxy: str) -> torch.Tensor:
        if method in CANONICALIZATION_METHODS:
            return moved_orbit_logits(model, self.test, self.batch_size, self.device)
        if self._features is None:  # the same trained upper units for every model a cell evaluates
            self._features = slot_features(upper, self.test, self.batch_size, self.device)
        return orbit_logits(model, method, group, upper, self.test, self.batch_size, self.device, equizero_proxy,
                            features=self._features)

    def probe(self, count: int) -> torch.Tensor:
        """The orbits of the first ``count`` test images, on the device."""
        return self.test[slice(0, count)].to(self.device)

    def action(self, group: str) -> OrbitAction:
        return OrbitAction(group)


def cell_inputs(params: ImagesParams, data: dict[str, np.ndarray], orbits: dict[str, torch.Tensor] | None,
                device: torch.device, autocast: torch.dtype | None) -> ImageInputs | OrbitInputs:
    """The input kind ``images.train.trainable_depth`` asks for: the images (``all``), else the cached orbits."""
    depth = params.train.trainable_depth
    if depth == "all":
        return ImageInputs(params, data, device, autocast)
    if orbits is None:
        raise ConfigError(f"images.train.trainable_depth={depth} trains on cached orbits, but none were given")
    return OrbitInputs(params, data, orbits, device, autocast)


def image_logits(model: nn.Module, images: np.ndarray, resolution: int, batch_size: int, device: torch.device,
                 autocast: torch.dtype | None = None) -> torch.Tensor:
    """``[8, N, K]``: the logits of ``images`` moved by each element of D4 (whole model on images)."""
    action = image_action("d4")
    return torch.stack([
        predict(model, images, batch_size, prepare=lambda x, g=g: action.apply(to_model_input(x, resolution), g),
                device=device, autocast=autocast)
        for g in action.group
    ])


def slot_features(upper: ImageClassifier, orbits: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``[N, 8, F]``: the trained upper units' features of every slot of the orbits (eval mode)."""
    features = predict(upper.features, orbits.flatten(0, 1), batch_size * len(D4_ELEMENTS), device=device)
    return features.reshape(orbits.shape[0], orbits.shape[1], *features.shape[1:])


def orbit_logits(model: nn.Module, method: str, group: str, upper: ImageClassifier, orbits: torch.Tensor,
                 batch_size: int, device: torch.device, equizero_proxy: str = "entropy",
                 features: torch.Tensor | None = None) -> torch.Tensor:
    """``[8, N, K]`` for a model trained on cached orbits, from the test orbits ``[N, 8, ...]``.

    The trained upper units run once per slot (eval mode: each slot's features depend on that slot alone); the
    method is then rebuilt on those features with the same head and lambda MLP and evaluated on the features' orbit
    moved by each element of D4 (:class:`OrbitAction` acts on any per-slot tensor). This gives the same logits as
    ``model`` on the moved orbits, at 1/|G| of the cost (a test checks the equality in float64). ``features``: those
    slot features already computed (:func:`slot_features`: one pass serves every method built on ``upper``)."""
    if features is None:
        features = slot_features(upper, orbits, batch_size, device)
    on_features = build_method(method, group, ImageClassifier(nn.Sequential(), upper.head),
                               equizero_proxy=equizero_proxy, on_orbits=True,
                               lambda_net=getattr(model, "lambda_net", None))
    action = OrbitAction("d4")
    return torch.stack([predict(on_features, action.apply(features, g), batch_size, device=device)
                        for g in action.group])


def moved_orbit_logits(model: nn.Module, orbits: torch.Tensor, batch_size: int, device: torch.device
                       ) -> torch.Tensor:
    """``[8, N, K]``: ``model`` on the test orbits moved by each element of D4, run as it is. For the
    canonicalization methods, whose scorer reads the cached maps themselves, not the trained upper units' features
    (so :func:`orbit_logits`'s shortcut does not apply)."""
    action = OrbitAction("d4")
    return torch.stack([predict(model, action.apply(orbits, g), batch_size, device=device) for g in action.group])
