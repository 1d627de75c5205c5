"""Equivariance error of any model under any group action: one checker for tests, pipeline and report."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["equivariance_error", "equivariance_errors"]


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@torch.no_grad()
def equivariance_errors(model: nn.Module, input_actions, inputs, output_action=None) -> dict[str, float]:
    """Largest absolute deviation of ``f(g . x)`` from ``g . f(x)`` (from ``f(x)`` when ``output_action`` is None),
    per group element name. ``inputs`` and ``input_actions`` are one of each or matching tuples (``None`` actions
    leave that input alone)."""
    actions = _as_tuple(input_actions)
    xs = _as_tuple(inputs)
    if len(actions) != len(xs):
        raise ValueError(f"{len(xs)} input(s) but {len(actions)} input action(s)")
    group = next(a for a in actions if a is not None).group
    reference = model(*xs)
    errors = {}
    for g in group:
        moved = model(*(x if a is None else a.apply(x, g) for x, a in zip(xs, actions)))
        expected = reference if output_action is None else output_action.apply(reference, g)
        errors[group.element_names[g]] = float((moved - expected).abs().max()) if moved.numel() else 0.0
    return errors


def equivariance_error(model: nn.Module, input_actions, inputs, output_action=None) -> float:
    """The worst element's error from :func:`equivariance_errors` (0 for an exactly equivariant model)."""
    return max(equivariance_errors(model, input_actions, inputs, output_action).values())
