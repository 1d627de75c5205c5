"""Wrappers that make any backbone ``nn.Module`` invariant or equivariant to a finite group.

- :class:`EquiTune`: ``M_G(x) = 1/|G| sum_g g^-1 . M(g . x)`` (invariant when ``output_action`` is None).
- :class:`LambdaEquiTune`: the same average weighted by a learned positive ``lambda(g . x)``.
- :class:`EquiZero`: ``g*^-1 . M(g* . x)`` with ``g*`` the element whose output scores best on a proxy loss,
  trained with the straight-through estimator (forward value = equizero, gradient = equitune average).

All three send the |G| transformed copies through the backbone as one batch ``[|G|*B, ...]`` (optionally in
chunks of ``chunk_size`` group elements, which changes memory, not results). The backbone is a registered
submodule, so ``parameters()``, ``.to()``, ``.eval()`` and ``state_dict()`` reach it.

Inputs: ``input_actions`` is one action (the model takes one tensor) or a tuple with one entry per positional
input; ``None`` marks an input the group leaves alone (lengths, masks), which is simply repeated |G| times.
Averaging at a feature layer is the same wrapper around the feature extractor with ``output_action`` set to the
action on feature maps, e.g. ``EquiTune(features, image_action("c4"), output_action=image_action("c4"))``.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from .groups import FiniteGroup

__all__ = ["EquiTune", "LambdaEquiTune", "EquiZero", "entropy_proxy", "max_prob_proxy", "PROXIES"]

ActionLike = object  # anything with .group, .transform_all(x) and .untransform_all(y)
InputActions = Union[ActionLike, Sequence[Union[ActionLike, None]]]


def _same_group(a: FiniteGroup, b: FiniteGroup) -> bool:
    return a.order == b.order and a.table == b.table


class _GroupBatched(nn.Module):
    """Shared machinery: transform inputs by every group element, run the backbone once, map outputs back."""

    def __init__(self, backbone: nn.Module, input_actions: InputActions, output_action=None, chunk_size: int | None = None):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module; got {type(backbone).__name__}")
        self.backbone = backbone
        actions = tuple(input_actions) if isinstance(input_actions, (tuple, list)) else (input_actions,)
        present = [a for a in actions if a is not None]
        if not present:
            raise ValueError("at least one input must be acted on by the group")
        self.group: FiniteGroup = present[0].group
        for action in present[1:] + ([output_action] if output_action is not None else []):
            if not _same_group(action.group, self.group):
                raise ValueError(f"all actions must be of one group; got {self.group.name!r} and {action.group.name!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of group elements; got {chunk_size}")
        self.input_actions = actions
        self.output_action = output_action
        self.chunk_size = chunk_size

    def transformed_inputs(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Each input as its |G| transformed copies ``[|G|, B, ...]`` (left-alone inputs repeated)."""
        if len(inputs) != len(self.input_actions):
            raise ValueError(f"expected {len(self.input_actions)} positional input(s), one per input action; got {len(inputs)}")
        order = self.group.order
        stacked = []
        for x, action in zip(inputs, self.input_actions):
            stacked.append(x.unsqueeze(0).expand(order, *x.shape) if action is None else action.transform_all(x))
        return stacked

    def _run_backbone(self, module: nn.Module, stacked: list[torch.Tensor], **kwargs) -> torch.Tensor:
        """Apply ``module`` to ``[|G|, B, ...]`` inputs as one ``[|G|*B, ...]`` batch (or chunks over the group axis)."""
        order = self.group.order
        step = self.chunk_size or order
        outputs = []
        for start in range(0, order, step):
            parts = [x[start:start + step] for x in stacked]
            count = parts[0].shape[0]
            flat = [p.reshape(count * p.shape[1], *p.shape[2:]) for p in parts]
            y = module(*flat, **kwargs)
            outputs.append(y.reshape(count, y.shape[0] // count, *y.shape[1:]))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _map_back(self, stacked_outputs: torch.Tensor) -> torch.Tensor:
        return stacked_outputs if self.output_action is None else self.output_action.untransform_all(stacked_outputs)

    def group_outputs(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        """``g^-1 . M(g . x)`` for every element, stacked ``[|G|, B, ...]`` (row g belongs to element g)."""
        return self._map_back(self._run_backbone(self.backbone, self.transformed_inputs(*inputs), **kwargs))


class EquiTune(_GroupBatched):
    """Group-averaged backbone: invariant (``output_action=None``) or equivariant."""

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.group_outputs(*inputs, **kwargs).mean(dim=0)


class LambdaEquiTune(_GroupBatched):
    """``sum_g lambda(g x) g^-1 M(g x) / sum_g lambda(g x)`` with a learned positive ``lambda``.

    ``lambda_net`` maps a batch to one unnormalised score per example; softplus makes it positive. With ``head``
    given, the backbone is a feature extractor: ``lambda_net`` reads its features and ``head`` turns them into
    the output (the follow-up paper's arrangement). Otherwise ``lambda_net`` reads the transformed inputs.
    """

    def __init__(self, backbone: nn.Module, lambda_net: nn.Module, input_actions: InputActions, output_action=None,
                 head: nn.Module | None = None, chunk_size: int | None = None):
        super().__init__(backbone, input_actions, output_action, chunk_size)
        self.lambda_net = lambda_net
        self.head = head

    def outputs_and_weights(self, *inputs: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Mapped-back outputs ``[|G|, B, ...]`` and normalised weights ``[|G|, B]`` (positive, summing to 1)."""
        stacked = self.transformed_inputs(*inputs)
        produced = self._run_backbone(self.backbone, stacked, **kwargs)
        if self.head is None:
            outputs, scores = produced, self._run_backbone(self.lambda_net, stacked)
        else:
            outputs = self._run_backbone(self.head, [produced])
            scores = self._run_backbone(self.lambda_net, [produced])
        scores = scores.reshape(self.group.order, -1)
        weights = F.softplus(scores) + 1e-6  # strictly positive, so the normalisation is always defined
        weights = weights / weights.sum(dim=0, keepdim=True)
        return self._map_back(outputs), weights

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        outputs, weights = self.outputs_and_weights(*inputs, **kwargs)
        return (weights.reshape(*weights.shape, *([1] * (outputs.dim() - 2))) * outputs).sum(dim=0)


def _reduce_to_examples(per_position: torch.Tensor) -> torch.Tensor:
    """Mean over every axis after ``[|G|, B]`` (e.g. sequence positions)."""
    return per_position.reshape(*per_position.shape[:2], -1).mean(dim=-1)


def entropy_proxy(outputs: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last axis; lower is more confident. ``[|G|, B, ..., K] -> [|G|, B]``."""
    log_probs = F.log_softmax(outputs, dim=-1)
    return _reduce_to_examples(-(log_probs.exp() * log_probs).sum(dim=-1))


def max_prob_proxy(outputs: torch.Tensor) -> torch.Tensor:
    """Negative largest softmax probability; lower is more confident. ``[|G|, B, ..., K] -> [|G|, B]``."""
    return _reduce_to_examples(-F.softmax(outputs, dim=-1).amax(dim=-1))


PROXIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"entropy": entropy_proxy, "max_prob": max_prob_proxy}


class EquiZero(_GroupBatched):
    """Pick, per example, the element whose (mapped-back) output minimises ``proxy``; return that output.

    ``proxy`` is ``"entropy"``, ``"max_prob"`` (both pick the most confident element) or a function
    ``[|G|, B, ...] -> [|G|, B]`` where lower is better. In training mode the gradient is the equitune average's
    (straight-through estimator), since the argmin itself has no gradient.
    """

    def __init__(self, backbone: nn.Module, input_actions: InputActions, output_action=None,
                 proxy: str | Callable[[torch.Tensor], torch.Tensor] = "entropy", chunk_size: int | None = None,
                 straight_through: bool = True):
        super().__init__(backbone, input_actions, output_action, chunk_size)
        if isinstance(proxy, str):
            if proxy not in PROXIES:
                raise ValueError(f"unknown equizero proxy {proxy!r}; allowed: {', '.join(PROXIES)} or a function")
            proxy = PROXIES[proxy]
        self.proxy = proxy
        self.straight_through = straight_through

    def select(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen element per example ``[B]`` and its output ``[B, ...]`` from stacked outputs ``[|G|, B, ...]``."""
        with torch.no_grad():
            scores = self.proxy(outputs)
        chosen = scores.argmin(dim=0)
        return chosen, outputs[chosen, torch.arange(outputs.shape[1], device=outputs.device)]

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        outputs = self.group_outputs(*inputs, **kwargs)
        _, selected = self.select(outputs)
        if self.training and self.straight_through:
            average = outputs.mean(dim=0)
            return average + (selected - average).detach()
        return selected
