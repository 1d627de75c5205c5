"""Equivariance error of any model under any group action: one checker for tests, pipeline and report.

The check is the definition, element by element: compare ``f(g . x)`` with ``g . f(x)`` (with ``f(x)`` for an
invariant model) for every ``g``. It calls the model once per element on purpose: it is independent of the
wrappers' batched transform/untransform code that it is meant to test. Put the model in ``eval()`` mode first
(dropout would make any model look non-equivariant).

- :func:`equivariance_errors` / :func:`equivariance_error`: the measured errors (the pipeline reports them).
- :func:`assert_equivariant`: the assertion every test uses, with one tolerance per output dtype
  (:data:`TOLERANCES`, scaled by the size of the outputs) and a message naming each failing element.
- :func:`assert_not_equivariant`: its counterpart for the backbones a test expects to be broken, so that a test of
  a wrapper cannot pass on a backbone that was equivariant already.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TOLERANCES", "assert_equivariant", "assert_not_equivariant", "equivariance_error", "equivariance_errors"]

TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 5e-2,
}
"""Largest error that counts as float round-off, per output dtype, relative to ``max(1, max |f(x)|)``.

float64 is where exactness is tested (deep float64 models stay near 1e-14); the float32 value leaves room for
the different summation orders of a |G|-times larger batch. Integer outputs (token ids) must match exactly."""


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _describe(group) -> str:
    return f"{group.name!r} (order {group.order})"


@torch.no_grad()
def _measure(model: nn.Module, input_actions, inputs, output_action=None) -> tuple[dict[str, float], torch.Tensor]:
    """Per-element errors and the reference output ``f(x)``."""
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
    return errors, reference


def equivariance_errors(model: nn.Module, input_actions, inputs, output_action=None) -> dict[str, float]:
    """Largest absolute deviation of ``f(g . x)`` from ``g . f(x)`` (from ``f(x)`` when ``output_action`` is None),
    per group element name. ``inputs`` and ``input_actions`` are one of each or matching tuples (``None`` actions
    leave that input alone). A NaN anywhere gives NaN for that element, never a small number."""
    return _measure(model, input_actions, inputs, output_action)[0]


def equivariance_error(model: nn.Module, input_actions, inputs, output_action=None) -> float:
    """The worst element's error from :func:`equivariance_errors` (0 for an exactly equivariant model; NaN if
    any element's is NaN)."""
    errors = equivariance_errors(model, input_actions, inputs, output_action).values()
    return math.nan if any(math.isnan(e) for e in errors) else max(errors)


def _tolerance(reference: torch.Tensor, atol: float | None) -> float:
    if atol is not None:
        return atol
    if not reference.is_floating_point():
        return 0.0
    if reference.dtype not in TOLERANCES:
        raise ValueError(f"no equivariance tolerance for outputs of dtype {reference.dtype}; pass atol=")
    scale = max(1.0, float(reference.detach().abs().max())) if reference.numel() else 1.0
    return TOLERANCES[reference.dtype] * scale


_OWN = object()  # "not passed": read the wrapper's own actions


def _own_actions(model: nn.Module, input_actions, inputs, output_action):
    """``assert_equivariant(wrapper, x)``: the inputs come second and the actions are the wrapper's own."""
    if inputs is not _OWN:
        return input_actions, inputs, (None if output_action is _OWN else output_action)
    if not hasattr(model, "input_actions"):
        raise TypeError(f"{type(model).__name__} does not declare its actions (no .input_actions); pass them: "
                        "assert_equivariant(model, input_actions, inputs, output_action)")
    actions = model.input_actions
    own_output = getattr(model, "output_action", None)
    return (actions[0] if len(actions) == 1 else actions), input_actions, \
        (own_output if output_action is _OWN else output_action)


def assert_equivariant(model: nn.Module, input_actions, inputs=_OWN, output_action=_OWN, *,
                       atol: float | None = None) -> dict[str, float]:
    """Assert ``f(g . x) == g . f(x)`` (``f(x)`` when ``output_action`` is None) for every element, up to round-off.

    ``assert_equivariant(wrapper, x)`` checks a wrapper of this library (or any module with ``.input_actions`` and
    ``.output_action``) against its own declared actions. The tolerance is ``atol`` if given, else
    :data:`TOLERANCES` of the output dtype times ``max(1, max |f(x)|)`` (0 for integer outputs). Raises
    ``AssertionError`` listing every failing element with its error (pytest shows the caller's line, not this
    function's); returns the errors per element when all pass."""
    __tracebackhide__ = True  # pytest: the failure points at the test that called this, as numpy's asserts do
    input_actions, inputs, output_action = _own_actions(model, input_actions, inputs, output_action)
    errors, reference = _measure(model, input_actions, inputs, output_action)
    tolerance = _tolerance(reference, atol)
    relation = "f(g x) vs g f(x)" if output_action is not None else "f(g x) vs f(x)"
    failing = [f"  element {name!r}: max |{relation}| = {error:.3g}"
               for name, error in errors.items() if not error <= tolerance]  # NaN fails too
    if failing:
        raise AssertionError(f"not equivariant within {tolerance:.3g} ({reference.dtype}) for "
                             f"{len(failing)} of {len(errors)} element(s):\n" + "\n".join(failing))
    return errors


def assert_not_equivariant(model: nn.Module, input_actions, inputs, output_action=None, *,
                           min_error: float = 1e-3) -> float:
    """Assert that some element moves the output by more than ``min_error``: the model is really not equivariant.

    Tests call it on the bare backbone before wrapping it, so that the wrapper's test means something."""
    __tracebackhide__ = True
    errors, _ = _measure(model, input_actions, inputs, output_action)
    worst = max(errors.values())
    if not worst > min_error:
        raise AssertionError(f"expected a model that is not equivariant (some error > {min_error:g}); every element's "
                             f"error is at most {worst:.3g}: " + ", ".join(f"{k}={v:.3g}" for k, v in errors.items()))
    return worst
