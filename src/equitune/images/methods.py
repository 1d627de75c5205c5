"""Build the model a method trains: the classifier itself (finetune baselines) or a core wrapper around it.

- ``finetune``: the classifier; group ``trivial``.
- ``finetune_augment``: the same model; training images are rotated by random multiples of 90 degrees
  (see :func:`augment_batch` / :func:`augment_orbits`), the baseline that learns invariance from data instead of by
  construction.
- ``equitune``: ``EquiTune(classifier)``, class logits averaged over the group (invariant).
- ``lambda_equitune``: ``LambdaEquiTune(features, lambda MLP, head=head)``: logits of each transformed copy weighted
  by a small positive MLP on its backbone features (the follow-up paper's arrangement, MLP F-h-h-1).
- ``equizero``: ``EquiZero(classifier)``: the logits of the most confident transformed copy (straight-through
  gradient of the equitune average in training).
- ``frame``, ``canonicalize``, ``canonicalize_prior``: ``Canonicalize(classifier)``, the logits of the copies whose
  score is lowest (a fixed or a learned score of the frozen part's maps), see :mod:`equitune.images.canonical`.
- ``gcnn``: no classifier at all: a steerable G-CNN trained from scratch (:mod:`equitune.images.gcnn`, built by
  :func:`~equitune.images.experiment.run_cell`, not here).

The same builder serves both input kinds: images (the group acts by ``image_action``) and cached D4 orbits of a
frozen lower part (the group acts by :class:`~equitune.images.cached.OrbitAction`, the baselines read the orbit's
identity slot), see :mod:`equitune.images.cached`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.frames import Canonicalize
from ..core.groups import image_action
from ..core.wrappers import EquiTune, EquiZero, LambdaEquiTune
from .backbones import ImageClassifier
from .cached import IdentitySlot, OrbitAction
from .canonical import canonicalizer
from .config import BASELINE_METHODS, CANONICALIZATION_METHODS, GCNN_GROUP_NAMES, GROUP_METHODS, SCRATCH_METHODS

__all__ = ["augment_batch", "augment_orbits", "build_method", "lambda_mlp", "method_group", "new_parameters",
           "random_quarter_turns"]


def method_group(method: str, group: str) -> str:
    """The group a method really uses: the baselines ignore the group."""
    if method in BASELINE_METHODS:
        if group != "trivial":
            raise ConfigError(f"method {method!r} ignores the group; run it with group 'trivial' (got {group!r})")
        return "trivial"
    if method not in GROUP_METHODS:
        raise ConfigError(f"unknown method {method!r}; allowed: {', '.join(BASELINE_METHODS + GROUP_METHODS)}")
    if group == "trivial":
        raise ConfigError(f"method {method!r} needs a non-trivial group (c4, d4, hflip, vflip)")
    if method in SCRATCH_METHODS and group not in GCNN_GROUP_NAMES:
        raise ConfigError(f"method {method!r} is built for the groups {', '.join(GCNN_GROUP_NAMES)}; got {group!r}")
    return group


def lambda_mlp(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def build_method(method: str, group: str, classifier: ImageClassifier, lambda_hidden: int = 100,
                 equizero_proxy: str = "entropy", *, on_orbits: bool = False,
                 lambda_net: nn.Module | None = None, score_head: nn.Module | None = None,
                 frozen: nn.Module | None = None) -> nn.Module:
    """The model of ``method`` around ``classifier``; ``on_orbits``: its inputs are cached D4 orbits of the features
    that ``classifier`` reads (see :mod:`equitune.images.cached`), else images. ``lambda_net``: reuse this lambda
    MLP (a trained one) instead of a fresh one. The canonicalization methods need ``score_head``
    (:func:`~equitune.images.canonical.score_head`) and, on images, ``frozen``: the lower part whose maps it reads."""
    group = method_group(method, group)
    if method in SCRATCH_METHODS:
        raise ValueError(f"method {method!r} trains its own network (equitune.images.gcnn.build_gcnn), not a "
                         "wrapper around a classifier")
    if method in BASELINE_METHODS:
        return IdentitySlot(classifier) if on_orbits else classifier
    action = OrbitAction(group) if on_orbits else image_action(group)
    if method in CANONICALIZATION_METHODS:
        if score_head is None or (frozen is None and not on_orbits):
            raise ValueError(f"method {method!r} needs score_head (and, on images, the frozen part it reads)")
        return canonicalizer(method, classifier, action, score_head, frozen=None if on_orbits else frozen)
    if method == "equitune":
        return EquiTune(classifier, action)
    if method == "lambda_equitune":
        width = classifier.head.in_features
        return LambdaEquiTune(classifier.features, lambda_net or lambda_mlp(width, lambda_hidden), action,
                              head=classifier.head)
    return EquiZero(classifier, action, proxy=equizero_proxy)


def random_quarter_turns(count: int, generator: torch.Generator) -> torch.Tensor:
    """One random multiple of 90 degrees per example (0..3): the finetune_augment baseline's draw."""
    return torch.randint(0, 4, (count,), generator=generator)


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by its own random multiple of 90 degrees (the finetune_augment baseline)."""
    quarter_turns = random_quarter_turns(images.shape[0], generator)
    out = images.clone()
    for k in range(1, 4):  # 3 vectorised rotations, one per non-trivial angle
        chosen = quarter_turns == k
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return out


def augment_orbits(orbits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The cached counterpart of :func:`augment_batch`: each orbit becomes the orbit of its image rotated by the
    same random quarter turn (rotation by k quarter turns is element k of C4), so the identity slot the baseline
    reads is the frozen part's output on the rotated image."""
    return OrbitAction("c4").apply_each(orbits, random_quarter_turns(orbits.shape[0], generator))


def new_parameters(model: nn.Module, classifier: ImageClassifier) -> list[nn.Parameter]:
    """The parameters that do not come from the pretrained backbone: the new head, lambda-equitune's MLP and the
    canonicalizer's learned score."""
    fresh = list(classifier.head.parameters())
    if isinstance(model, LambdaEquiTune):
        fresh += list(model.lambda_net.parameters())
    if isinstance(model, Canonicalize):
        pretrained = {id(p) for p in classifier.parameters()}
        fresh += [p for p in model.scores.parameters() if id(p) not in pretrained]
    return fresh
