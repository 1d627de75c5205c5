"""Frames and canonicalization for the image classifiers, on images and on cached D4 orbits alike.

Each method is a :class:`~equitune.core.frames.Canonicalize` around the classifier: every test input is moved by
the elements of the group whose score is lowest (ties kept), and the class logits of those copies are averaged.
The scores are ``score_head(frozen(g . x))`` for every ``g`` (:class:`~equitune.core.frames.OrbitScores`), where
``frozen`` is the network's frozen lower part: equivariant by construction whatever ``score_head`` is.

Why the scorer reads the frozen part's maps rather than the raw image: the cells train on cached D4 orbits, which
hold ``frozen(g . x)`` for every element already (:mod:`equitune.images.cached`) and not the image; a head on those
maps costs no extra network pass there, and the *same* function runs on images (``frozen`` then the head), so the
frame on a cached orbit is the frame on its image (a test checks the equality). With ``trainable_depth: all`` the
frozen part is the input normalisation, and the head reads the normalised image itself.

- ``frame``: a fixed score, minus the mean of the top-left quadrant of the maps (:class:`QuadrantMassScore`); no
  parameters, trained like equitune (the frame average in training too).
- ``canonicalize`` (Kaba et al., ICML 2023): a learned linear score on the 2x2-pooled maps
  (:class:`PooledLinearScore`, ``4 C + 1`` parameters), trained jointly with the classifier through the
  straight-through one-hot choice (one classifier call per training example), argmin (tied elements averaged) at test.
- ``canonicalize_prior`` (Mondal et al., NeurIPS 2023): the same plus ``weight * identity_prior_loss`` on the
  upright training images (:func:`prior_regulariser`), which pushes them to be left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..core.frames import Canonicalize, FrameAverage, OrbitScores, identity_prior_loss
from ..core.wrappers import EquiTune, EquiZero, LambdaEquiTune
from .config import CANONICALIZATION_METHODS

__all__ = ["PooledLinearScore", "QuadrantMassScore", "backbone_calls", "canonicalizer", "identity_weight",
           "prior_regulariser", "score_head"]

_POOLED = 2  # maps are average-pooled to 2x2: one cell per quadrant (the last cached maps are 2x2 at 48 px already)


class QuadrantMassScore(nn.Module):
    """Fixed score ``[N, C, h, w] -> [N]``: minus the mean of the top-left quadrant over channels, so the element
    that puts the heaviest top-left quadrant of the maps first wins (on a raw image: the brightest quadrant)."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return -F.adaptive_avg_pool2d(maps, _POOLED)[:, :, 0, 0].mean(dim=1)


class PooledLinearScore(nn.Module):
    """Learned score ``[N, C, h, w] -> [N]``: a linear layer on the 2x2 average-pooled maps. Linear and tiny: the
    choice among |G| poses of one input needs the layout of the maps, not a second classifier."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels * _POOLED * _POOLED, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(maps, _POOLED).flatten(1)).squeeze(-1)


def score_head(method: str, channels: int) -> nn.Module:
    """The score of ``method`` on maps of ``channels`` channels (a fresh, untrained one for the learned methods)."""
    if method not in CANONICALIZATION_METHODS:
        raise ValueError(f"{method!r} is not a canonicalization method ({', '.join(CANONICALIZATION_METHODS)})")
    return QuadrantMassScore() if method == "frame" else PooledLinearScore(channels)


def canonicalizer(method: str, backbone: nn.Module, action, head: nn.Module,
                  frozen: nn.Module | None = None) -> Canonicalize:
    """``Canonicalize(backbone)`` scored by ``head`` on ``frozen(g . x)`` (``frozen`` None: the inputs are cached
    orbits, whose transformed copies are already the frozen part's maps). ``frame`` averages over its frame in
    training too; the learned methods train straight-through."""
    if method not in CANONICALIZATION_METHODS:
        raise ValueError(f"{method!r} is not a canonicalization method ({', '.join(CANONICALIZATION_METHODS)})")
    scorer = head if frozen is None else nn.Sequential(frozen, head)
    return Canonicalize(backbone, action, OrbitScores(scorer, action), straight_through=method != "frame")


def prior_regulariser(model: Canonicalize, weight: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> weight * identity_prior_loss(scores(x))``: Mondal et al.'s prior, added to the training loss."""
    if not weight >= 0:
        raise ValueError(f"the prior weight must be >= 0; got {weight}")

    def regulariser(x: torch.Tensor) -> torch.Tensor:
        return weight * identity_prior_loss(model.scores(x), model.temperature)

    return regulariser


@torch.no_grad()
def _frames(model: FrameAverage, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """The frame masks ``[|G|, N]`` of ``inputs`` (eval mode, ``batch_size`` at a time)."""
    return torch.cat([model.frame_mask(inputs[start:start + batch_size].to(device)).cpu()
                      for start in range(0, len(inputs), batch_size)], dim=1)


def backbone_calls(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Classifier calls per input at inference: the mean frame size for a frame average, |G| for the other group
    wrappers (every copy), 1 for a plain classifier."""
    if isinstance(model, FrameAverage):
        return float(_frames(model, inputs, batch_size, device).sum(dim=0).double().mean())
    if isinstance(model, (EquiTune, EquiZero, LambdaEquiTune)):
        return float(model.group.order)
    return 1.0


def identity_weight(model: FrameAverage, inputs: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean weight of the identity in the frame average of ``inputs``: the fraction of (upright) inputs left as they
    are when every frame has one element; an input whose frame ties ``k`` elements counts ``1/k`` if the identity
    is one of them."""
    mask = _frames(model, inputs, batch_size, device).double()
    return float((mask[0] / mask.sum(dim=0)).mean())
