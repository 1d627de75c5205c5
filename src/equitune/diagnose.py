"""Why is my model not equivariant? The first submodule whose output stops transforming as declared.

A model meant to be invariant fails :func:`~equitune.core.checks.assert_equivariant` as a whole, and so does every
layer after the one that broke the symmetry. :func:`locate_equivariance_break` finds that one layer. You declare
how some submodules' outputs should transform, by their names in ``model.named_modules()``:

    report = locate_equivariance_break(model, c4, images, {"conv1": c4, "conv2": c4, "pool": None, "head": None})
    print(report)              # the table, in execution order
    report.first_break         # None, or the submodule, the element, the error and the tolerance

An action means "``h(g x) = g . h(x)``" (e.g. ``image_action("c4")`` on a feature map ``[B, C, H, W]``: every
channel rotates with the image); ``None`` means invariant, ``h(g x) = h(x)``; the name ``""`` is the whole model.
Undeclared submodules are not checked. The model runs once on ``x`` and once on ``g . x`` per group element, with
forward hooks recording the declared submodules' outputs. Rows come in the order the calls finish (a container
after its children); a submodule called twice gives two rows (``act#1``, ``act#2``) and a tuple output one row per
tensor (``lstm[0]``, ``lstm[1]``; declare a tuple of actions to give each tensor its own).

Errors and tolerances are the checker's: ``max |h(g x) - g . h(x)|`` per element, against
:data:`~equitune.core.checks.TOLERANCES` of the output dtype times ``max(1, max |h(x)|)`` (0 for integer outputs),
so declaring the whole model reproduces ``assert_equivariant``'s verdict. Like the checker, put the model in
``eval()`` mode first: dropout draws different masks on ``x`` and on ``g x``, which would make every layer after it
look broken (this module warns when a submodule is in training mode).
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.checks import TOLERANCES
from .core.errors import ConfigError
from .core.groups import FiniteGroup, GroupAction, VocabPermutation, WordCycles

__all__ = ["EquivarianceBreak", "EquivarianceDiagnosis", "SubmoduleCheck", "locate_equivariance_break"]

Declaration = GroupAction | None | Sequence[GroupAction | None]
"""How one submodule's output transforms: an action, ``None`` (invariant), or one of those per output tensor."""

_WHOLE_MODEL = "(model)"  # how the row of the name "" reads in the table


@dataclass(frozen=True)
class SubmoduleCheck:
    """One recorded output tensor of one declared submodule, against its declaration, for every group element."""

    call: str  # the row's name: "conv", "act#2" (its second call), "lstm[1]" (second tensor of a tuple output)
    module: str  # the submodule's name in model.named_modules() ("" for the whole model)
    declared: str  # "invariant" or the declared action
    shape: tuple[int, ...]
    errors: Mapping[str, float]  # group element name -> max |h(g x) - g h(x)| (inf if the shape changed)
    tolerance: float

    @property
    def broken_elements(self) -> tuple[str, ...]:
        """Names of the elements whose error exceeds the tolerance, in group order (NaN counts as broken)."""
        return tuple(name for name, error in self.errors.items() if not error <= self.tolerance)

    @property
    def ok(self) -> bool:
        return not self.broken_elements

    @property
    def worst_error(self) -> float:
        errors = list(self.errors.values())
        return math.nan if any(math.isnan(e) for e in errors) else max(errors, default=0.0)


@dataclass(frozen=True)
class EquivarianceBreak:
    """Where equivariance is first lost: the row, the first element (in group order) that breaks it, its error."""

    call: str
    module: str
    element: str
    error: float
    tolerance: float
    broken_elements: tuple[str, ...]

    def __str__(self) -> str:
        return (f"first break: {self.call!r} under element {self.element!r}: error {self.error:.3g} > tolerance "
                f"{self.tolerance:.3g} (broken by {', '.join(self.broken_elements)})")


@dataclass(frozen=True)
class EquivarianceDiagnosis:
    """Every declared submodule's check in execution order, and the first one that fails. ``print()`` it."""

    group: str
    checks: tuple[SubmoduleCheck, ...]

    @property
    def first_break(self) -> EquivarianceBreak | None:
        for check in self.checks:
            broken = check.broken_elements
            if broken:
                return EquivarianceBreak(check.call, check.module, broken[0], check.errors[broken[0]],
                                         check.tolerance, broken)
        return None

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def __str__(self) -> str:
        first = self.first_break
        header = ("submodule", "declared", "output shape", "worst error", "tolerance", "broken by")
        rows = [(c.call, c.declared, str(c.shape), f"{c.worst_error:.3g}", f"{c.tolerance:.3g}",
                 ", ".join(c.broken_elements) or "-") for c in self.checks]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [f"equivariance of the declared submodules under {self.group}, in execution order:",
                 "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        for check, row in zip(self.checks, rows, strict=True):
            marker = "  <- first break" if first is not None and check.call == first.call else ""
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + marker)
        lines.append(str(first) if first is not None else "no break: every declared submodule transforms as declared")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ validation
def _describe_group(group: FiniteGroup) -> str:
    return f"{group.name!r} (order {group.order})"


def _describe_action(action: Any) -> str:
    if action is None:
        return "invariant"
    if type(action).__repr__ is not object.__repr__:  # ImageAction("c4") says what it is; others get a name
        return repr(action)
    return f"{type(action).__name__}({action.group.name!r})"


def _check_action(action: Any, role: str) -> FiniteGroup:
    if isinstance(action, WordCycles):
        raise ConfigError(f"{role} is an unbound WordCycles; bind it to a vocabulary first: "
                          "cycles.bind(vocab).on_ids for token ids, .on_scores for vocabulary scores")
    if isinstance(action, VocabPermutation):
        raise ConfigError(f"{role} is a VocabPermutation; pass its .on_ids (token ids) or .on_scores "
                          "(the vocabulary axis of scores) instead")
    group = getattr(action, "group", None)
    if not isinstance(group, FiniteGroup) or not callable(getattr(action, "apply", None)):
        raise ConfigError(f"{role} must be a group action (with .group and .apply(x, g)) or None for invariant; "
                          f"got {type(action).__name__}")
    return group


def _same_group(a: FiniteGroup, b: FiniteGroup) -> bool:
    # The same abstract group with the same element numbering: element g must mean the same thing everywhere.
    return a.order == b.order and a.table == b.table


def _declared_actions(declaration: Declaration) -> tuple[Any, ...]:
    return tuple(declaration) if isinstance(declaration, (tuple, list)) else (declaration,)


def _resolve_declarations(model: nn.Module, declarations: Any, group: FiniteGroup) -> dict[str, nn.Module]:
    """The declared submodules by name; raises ConfigError for unknown names and actions of another group."""
    if not isinstance(declarations, Mapping) or not declarations:
        raise ConfigError("declarations must be a non-empty mapping {submodule name: action or None}, e.g. "
                          f"{{'conv1': image_action('c4'), 'head': None}}; got {declarations!r}")
    named = dict(model.named_modules(remove_duplicate=False))
    modules = {}
    for name, declaration in declarations.items():
        if not isinstance(name, str):
            raise ConfigError(f"declared submodule names must be strings as in model.named_modules(); got {name!r}")
        if name not in named:
            raise ConfigError(_unknown_name_message(name, model, named))
        if isinstance(declaration, (tuple, list)) and not declaration:
            raise ConfigError(f"declaration of {name!r} is an empty tuple; give one action (or None) per output "
                              "tensor, or a single action for all of them")
        for i, action in enumerate(_declared_actions(declaration)):
            if action is None:
                continue
            role = f"the action declared for {name!r}" + (f" (entry {i})" if isinstance(declaration, (tuple, list))
                                                          else "")
            declared_group = _check_action(action, role)
            if not _same_group(declared_group, group):
                raise ConfigError(f"{role} is of group {_describe_group(declared_group)} but the input action is of "
                                  f"group {_describe_group(group)}; all actions must be of one group")
        modules[name] = named[name]
    return modules


def _unknown_name_message(name: str, model: nn.Module, named: Mapping[str, nn.Module]) -> str:
    names = [n for n in named if n]
    close = difflib.get_close_matches(name, names, n=3)
    message = f"{type(model).__name__} has no submodule named {name!r}"
    if close:
        message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
    return message + f" Submodules (names as in model.named_modules(), '' for the whole model): {shown or 'none'}"


def _warn_if_training(model: nn.Module) -> None:
    training = [name or _WHOLE_MODEL for name, module in model.named_modules() if module.training]
    if training:
        shown = ", ".join(training[:5]) + (", ..." if len(training) > 5 else "")
        warnings.warn(f"{type(model).__name__} has submodules in training mode ({shown}): dropout draws different "
                      "masks on x and on g x, which makes every layer after it look broken; call model.eval() first",
                      RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------- recording
def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a submodule's output, in order (nested tuples, lists and dict values flattened)."""
    if isinstance(output, torch.Tensor):
        return [output.detach().clone()]  # a clone: a later in-place op (ReLU(inplace=True)) must not change it
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def _record(model: nn.Module, modules: Mapping[str, nn.Module], inputs: Sequence[Any]) -> list[tuple[str, list]]:
    """(submodule name, its output tensors) for every call of a declared submodule, in the order calls finish."""
    calls: list[tuple[str, list]] = []
    handles = []
    for name, module in modules.items():
        def hook(_module: nn.Module, _args: Any, output: Any, name: str = name) -> None:
            calls.append((name, _tensors(output)))
        handles.append(module.register_forward_hook(hook))
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _by_call(calls: list[tuple[str, list]]) -> dict[tuple[str, int], list[torch.Tensor]]:
    """The recorded calls keyed by (submodule name, call number from 1), in the order they finished."""
    seen: Counter[str] = Counter()
    keyed = {}
    for name, tensors in calls:
        seen[name] += 1
        keyed[(name, seen[name])] = tensors
    return keyed


# ------------------------------------------------------------------------------------------- comparing
def _tolerance(reference: torch.Tensor, atol: float | None, call: str) -> float:
    # The convention of equitune.core.checks.assert_equivariant, applied to each recorded output.
    if atol is not None:
        return atol
    if not reference.is_floating_point():
        return 0.0
    if reference.dtype not in TOLERANCES:
        raise ValueError(f"no equivariance tolerance for the output of {call!r} (dtype {reference.dtype}); "
                         f"pass atol= (tolerances are known for {', '.join(map(str, TOLERANCES))})")
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return TOLERANCES[reference.dtype] * scale


def _max_difference(moved: torch.Tensor, expected: torch.Tensor) -> float:
    if moved.shape != expected.shape:
        return math.inf  # the output changed shape under g: as broken as it gets
    if not moved.numel():
        return 0.0
    if moved.dtype == torch.bool:
        return float((moved != expected).any())
    # torch's max propagates NaN, so a NaN anywhere gives a NaN error, which counts as broken.
    return float((moved - expected).abs().max())


def _expected(action: Any, reference: torch.Tensor, g: int, call: str) -> torch.Tensor:
    if action is None:
        return reference
    try:
        return action.apply(reference, g)
    except (ValueError, TypeError, IndexError, RuntimeError) as error:
        raise ConfigError(f"the action declared for {call!r} ({_describe_action(action)}) cannot act on its output "
                          f"of shape {tuple(reference.shape)} ({reference.dtype}): {error}") from error


def _call_names(keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
    calls_per_module = Counter(name for name, _ in keys)
    return {(name, k): (name or _WHOLE_MODEL) + (f"#{k}" if calls_per_module[name] > 1 else "") for name, k in keys}


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@dataclass(frozen=True)
class _Row:
    """One recorded output tensor to compare: which call, which tensor of its output, and its declared action."""

    key: tuple[str, int]  # (submodule name, call number from 1)
    index: int  # which tensor of the call's output
    call: str
    action: Any


def _rows(reference: Mapping[tuple[str, int], list[torch.Tensor]],
          declarations: Mapping[str, Declaration]) -> list[_Row]:
    names = _call_names(list(reference))
    rows = []
    for key, tensors in reference.items():
        declared = _declared_actions(declarations[key[0]])
        if len(declared) > 1 and len(declared) != len(tensors):
            raise ConfigError(f"{names[key]!r} returned {len(tensors)} tensor(s) but {len(declared)} actions were "
                              "declared for it; declare one action (or None) per tensor, or one for all of them")
        for i in range(len(tensors)):
            call = names[key] + (f"[{i}]" if len(tensors) > 1 else "")
            rows.append(_Row(key, i, call, declared[i] if len(declared) > 1 else declared[0]))
    return rows


def _compare(model: nn.Module, modules: Mapping[str, nn.Module], declarations: Mapping[str, Declaration],
             group: FiniteGroup, actions: tuple, xs: tuple, atol: float | None) -> tuple[SubmoduleCheck, ...]:
    reference = _by_call(_record(model, modules, xs))
    silent = sorted(set(modules) - {name for name, _ in reference})
    if silent:
        raise ConfigError(f"declared submodule(s) {silent} did not run in the forward pass on these inputs; "
                          "declare only submodules the forward calls")
    rows = _rows(reference, declarations)
    if not rows:
        raise ConfigError(f"the declared submodules {sorted(modules)} returned no tensors; nothing to check")
    errors: dict[str, dict[str, float]] = {row.call: {} for row in rows}
    for g in group:
        element = group.element_names[g]
        moved = _by_call(_record(model, modules, [x if a is None else a.apply(x, g)
                                                  for x, a in zip(xs, actions, strict=True)]))
        if moved.keys() != reference.keys():
            raise RuntimeError(f"the declared submodules ran {dict(Counter(n for n, _ in moved))} times on g x "
                               f"(element {element!r}) but {dict(Counter(n for n, _ in reference))} times on x: "
                               "the forward pass depends on the input, so its calls cannot be matched")
        for row in rows:
            ref, produced = reference[row.key], moved[row.key]
            if len(produced) != len(ref):
                raise RuntimeError(f"{row.call!r} returned {len(ref)} tensor(s) on x but {len(produced)} on g x "
                                   f"(element {element!r})")
            expected = _expected(row.action, ref[row.index], g, row.call)
            errors[row.call][element] = _max_difference(produced[row.index], expected)
    return tuple(SubmoduleCheck(row.call, row.key[0], _describe_action(row.action),
                                tuple(reference[row.key][row.index].shape), errors[row.call],
                                _tolerance(reference[row.key][row.index], atol, row.call)) for row in rows)


def locate_equivariance_break(model: nn.Module, input_actions: Any, inputs: Any,
                              declarations: Mapping[str, Declaration], *,
                              atol: float | None = None) -> EquivarianceDiagnosis:
    """Check each declared submodule's output on ``x`` and ``g . x`` for every element; report the first break.

    ``input_actions`` and ``inputs`` are as for :func:`~equitune.core.checks.assert_equivariant`: one of each, or
    matching tuples (``None`` leaves that input alone). ``declarations`` maps submodule names (as in
    ``model.named_modules()``; ``""`` is the whole model) to the action their output should transform by, ``None``
    for invariant, or a tuple of those with one entry per tensor of a tuple output. Every action must be of the
    input action's group. ``atol`` replaces the per-dtype tolerance, as in ``assert_equivariant``.

    Returns an :class:`EquivarianceDiagnosis`: ``.first_break`` (``None`` when every declared output transforms as
    declared) and ``.checks``, one row per recorded output in execution order; ``print()`` shows the table.
    Raises :class:`~equitune.core.errors.ConfigError` for an unknown name (with a did-you-mean), an action of another
    group, a declared submodule that never ran, or an action that cannot act on the output it was declared for;
    warns (``RuntimeWarning``) when a submodule is in training mode.
    """
    actions, xs = _as_tuple(input_actions), _as_tuple(inputs)
    if len(actions) != len(xs):
        raise ValueError(f"{len(xs)} input(s) but {len(actions)} input action(s)")
    present = [(i, a) for i, a in enumerate(actions) if a is not None]
    if not present:
        raise ValueError("need at least one input action that is not None")
    group = _check_action(present[0][1], f"input action {present[0][0]}")
    for i, action in present[1:]:
        other = _check_action(action, f"input action {i}")
        if not _same_group(other, group):
            raise ConfigError(f"input action {i} is of group {_describe_group(other)} but input action "
                              f"{present[0][0]} is of group {_describe_group(group)}; all actions must be of one group")
    modules = _resolve_declarations(model, declarations, group)
    _warn_if_training(model)
    with torch.no_grad():
        checks = _compare(model, modules, declarations, group, actions, xs, atol)
    return EquivarianceDiagnosis(_describe_group(group), checks)
