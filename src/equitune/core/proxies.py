"""Equizero's proxy losses: one registry for class logits and for per-step sequence scores.

A proxy says how *unconfident* one output is; equizero keeps, per example, the group element whose output scores
lowest. Every proxy in :data:`PROXIES` maps scores over the last axis (logits or log-probabilities: each proxy
normalises with softmax / log-softmax itself) to one value per position, ``[..., K] -> [...]``:

- ``entropy``: entropy of the softmax (a zero probability contributes 0, not NaN);
- ``max_prob``: minus the largest probability;
- ``max_log_prob``: minus the largest log-probability.

All three pick the most confident element (the reference code's mistake was to pick the least confident one).
:func:`example_scores` reduces per-position values ``[|G|, B, ...]`` to one score per example ``[|G|, B]``: the
mean over the positions, or over the positions a mask keeps (the real tokens of a padded target, the decoding
steps before ``<eos>``). :class:`ProxyScore` binds the two for :class:`~equitune.core.wrappers.EquiZero`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from .errors import ConfigError

__all__ = ["PROXIES", "ProxyScore", "entropy", "example_scores", "get_proxy", "max_log_prob", "max_prob"]


def entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(scores)`` over the last axis; lower is more confident."""
    log_probs = F.log_softmax(scores, dim=-1)
    # A zero probability (a masked, -inf score) contributes 0, not 0 * -inf = NaN, which argmin would pick.
    plogp = torch.where(log_probs.isneginf(), torch.zeros_like(log_probs), log_probs.exp() * log_probs)
    return -plogp.sum(dim=-1)


def max_prob(scores: torch.Tensor) -> torch.Tensor:
    """Minus the largest softmax probability over the last axis; lower is more confident."""
    return -F.softmax(scores, dim=-1).amax(dim=-1)


def max_log_prob(scores: torch.Tensor) -> torch.Tensor:
    """Minus the largest log-softmax value over the last axis; lower is more confident."""
    return -F.log_softmax(scores, dim=-1).amax(dim=-1)


PROXIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": entropy,
    "max_prob": max_prob,
    "max_log_prob": max_log_prob,
}
"""Proxy name -> per-position proxy ``[..., K] -> [...]`` (lower = more confident)."""


def get_proxy(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in PROXIES:
        raise ConfigError(f"unknown equizero proxy {name!r}; allowed: {', '.join(PROXIES)}")
    return PROXIES[name]


def example_scores(per_position: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[|G|, B, ...]`` per-position values -> ``[|G|, B]``: the mean over positions (those where ``mask`` is
    True, when given; ``mask`` is ``[B, ...]``, shared by every element, or ``[|G|, B, ...]``)."""
    flat = per_position.reshape(*per_position.shape[:2], -1)
    if mask is None:
        return flat.mean(dim=-1)
    keep = mask if mask.dim() == per_position.dim() else mask.unsqueeze(0).expand(per_position.shape)
    keep = keep.reshape(flat.shape).to(flat.dtype)
    return (flat * keep).sum(dim=-1) / keep.sum(dim=-1).clamp(min=1)


class ProxyScore:
    """A named proxy as ``EquiZero`` calls it: stacked outputs ``[|G|, B, ..., K]`` -> scores ``[|G|, B]``.

    For padded sequences set :attr:`mask` (``[B, T]``, True at real positions) before each forward pass, so that
    padding never counts; with ``mask`` None every position counts."""

    def __init__(self, name: str):
        self.name = name
        self.per_position = get_proxy(name)
        self.mask: torch.Tensor | None = None

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        return example_scores(self.per_position(outputs), self.mask)

    def __repr__(self) -> str:
        return f"ProxyScore({self.name!r})"
