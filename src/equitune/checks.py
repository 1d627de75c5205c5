"""Equivariance error of any model under any group action: one checker for tests, pipeline and report.

The check is the definition, element by element: compare ``f(g . x)`` with ``g . f(x)`` (with ``f(x)`` for an
invariant model) for every ``g``. It calls the model once per element on purpose: it is independent of the
wrappers' batched transform/untransform code that it is meant to test. Put the model in ``eval()`` mode first
(dropout would make any model look non-equivariant).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["equivariance_error", "equivariance_errors"]


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _describe(group) -> str:
    return f"{group.name!r} (order {group.order})"


@torch.no_grad()
def equivariance_errors(model: nn.Module, input_actions, inputs, output_action=None) -> dict[str, float]:
    """Largest absolute deviation of ``f(g . x)`` from ``g . f(x)`` (from ``f(x)`` when ``output_action`` is None),
    per group element name. ``inputs`` and ``input_actions`` are one of each or matching tuples (``None`` actions
    leave that input alone). A NaN anywhere gives NaN for that element, never a small number."""
    actions = _as_tuple(input_actions)
    xs = _as_tuple(inputs)
    if len(actions) != len(xs):
        raise ValueError(f"{len(xs)} input(s) but {len(actions)} input action(s)")
    present = [a for a in actions if a is not None]
    if not present:
        raise ValueError("need at least one input action that is not None")
    group = present[0].group
    for action in present[1:] + ([output_action] if output_action is not None else []):
        if action.group.order != group.order or action.group.table != group.table:
            raise ValueError(f"all actions must be of one group; got {_describe(group)} and {_describe(action.group)}")
    reference = model(*xs)
    errors = {}
    for g in group:
        moved = model(*(x if a is None else a.apply(x, g) for x, a in zip(xs, actions, strict=True)))
        expected = reference if output_action is None else output_action.apply(reference, g)
        name = group.element_names[g]
        if moved.shape != expected.shape:
            raise ValueError(f"output shape changes under element {name!r}: f(g x) has shape {tuple(moved.shape)} "
                             f"but {'g f(x)' if output_action is not None else 'f(x)'} has {tuple(expected.shape)}")
        # torch's max propagates NaN; Python's max() below would not, hence the explicit check there.
        errors[name] = float((moved - expected).abs().max()) if moved.numel() else 0.0
    return errors


def equivariance_error(model: nn.Module, input_actions, inputs, output_action=None) -> float:
    """The worst element's error from :func:`equivariance_errors` (0 for an exactly equivariant model; NaN if
    any element's is NaN)."""
    errors = equivariance_errors(model, input_actions, inputs, output_action).values()
    return math.nan if any(math.isnan(e) for e in errors) else max(errors)
