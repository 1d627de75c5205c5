"""Wrappers that make any backbone ``nn.Module`` invariant or equivariant to a finite group.

- :class:`EquiTune`: ``M_G(x) = 1/|G| sum_g g^-1 . M(g . x)`` (invariant when ``output_action`` is None).
- :class:`LambdaEquiTune`: the same average weighted by a learned positive ``lambda(g . x)``.
- :class:`EquiZero`: ``g*^-1 . M(g* . x)`` with ``g*`` the element whose output scores best on a proxy loss,
  trained with the straight-through estimator (forward value = equizero, gradient = equitune average).

All three send the |G| transformed copies through the backbone as one batch ``[|G|*B, ...]`` (optionally in
chunks of ``chunk_size`` group elements, which changes memory, not results). The backbone must be batch-first:
its output's leading axis is the batch. The backbone is a registered submodule, so ``parameters()``, ``.to()``,
``.eval()`` and ``state_dict()`` reach it.

Inputs: ``input_actions`` is one action (the model takes one tensor) or a tuple with one entry per positional
input; ``None`` marks an input the group leaves alone (lengths, masks), which is simply repeated |G| times.
Tensor keyword arguments (e.g. ``attention_mask=``) are batched inputs the group leaves alone too, repeated the
same way; other keyword arguments reach the backbone unchanged.
Averaging at a feature layer is the same wrapper around the feature extractor with ``output_action`` set to the
action on feature maps, e.g. ``EquiTune(features, image_action("c4"), output_action=image_action("c4"))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .groups import FiniteGroup, GroupAction, VocabPermutation, WordCycles
from .proxies import PROXIES, ProxyScore

__all__ = ["EquiTune", "LambdaEquiTune", "EquiZero", "share_scores_of_identical_copies"]

InputActions = GroupAction | Sequence[GroupAction | None]


def _check_action(action: Any, role: str, needs: str) -> None:
    """Fail at construction, not at the first forward, when ``action`` is not a usable action."""
    if isinstance(action, WordCycles):
        raise TypeError(f"{role} is an unbound WordCycles; bind it to a vocabulary first: "
                        "cycles.bind(vocab).on_ids for token ids, cycles.bind_output(vocab).on_scores for scores")
    if isinstance(action, VocabPermutation):
        raise TypeError(f"{role} is a VocabPermutation; pass its .on_ids (acts on token ids) or "
                        ".on_scores (acts on the vocabulary axis of logits) instead")
    if not isinstance(getattr(action, "group", None), FiniteGroup) or not callable(getattr(action, needs, None)):
        raise TypeError(f"{role} must be a group action with .group and .{needs}(); got {type(action).__name__}")


def _describe(group: FiniteGroup) -> str:
    return f"{group.name!r} (order {group.order})"


def _same_group(a: FiniteGroup, b: FiniteGroup) -> bool:
    # The same abstract group with the same element numbering: what averaging g^-1 M(g x) over g needs.
    return a.order == b.order and a.table == b.table


def share_scores_of_identical_copies(transformed: torch.Tensor | Sequence[torch.Tensor],
                                     scores: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[|G|, B]`` with every copy ``g . x_b`` that equals an earlier copy ``g' . x_b`` (``g' < g``, in
    every tensor of ``transformed``, each ``[|G|, B, ...]``) given ``g'``'s score, so that an input fixed by an
    element ties exactly with its image: a backbone may give identical rows of one batch different last bits, and
    an argmin over such near-ties would depend on where the input sits in the batch."""
    tensors = [transformed] if isinstance(transformed, torch.Tensor) else list(transformed)
    order, batch = scores.shape
    same = torch.stack([(flat.unsqueeze(0) == flat.unsqueeze(1)).all(dim=-1)  # [|G| (j), |G| (k), B]
                        for flat in (t.reshape(order, batch, -1) for t in tensors)]).all(dim=0)
    first = same.int().argmax(dim=0)  # for each copy k, the first copy j equal to it (k itself if none earlier)
    return scores.gather(0, first)


def _batched_keywords(kwargs: dict, batch: int) -> dict[str, torch.Tensor]:
    """The tensor keyword arguments, each checked to be batched like the inputs (leading axis ``batch``): they follow
    their examples into the group's (or the frame's) copies."""
    tensors = {key: value for key, value in kwargs.items() if isinstance(value, torch.Tensor)}
    for key, value in tensors.items():
        if value.dim() == 0 or value.shape[0] != batch:
            raise ValueError(f"keyword tensor {key!r} must be batched like the inputs (leading axis {batch}), since "
                             f"it follows each example into its group copies; got shape {tuple(value.shape)}")
    return tensors


class _GroupBatched(nn.Module):
    """Shared machinery: transform inputs by every group element, run the backbone once, map outputs back."""

    def __init__(self, backbone: nn.Module, input_actions: InputActions, output_action=None,
                 chunk_size: int | None = None):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module; got {type(backbone).__name__}")
        self.backbone = backbone
        actions = tuple(input_actions) if isinstance(input_actions, (tuple, list)) else (input_actions,)
        for i, action in enumerate(actions):
            if action is not None:
                _check_action(action, f"input action {i}", "transform_all")
        if output_action is not None:
            _check_action(output_action, "output action", "untransform_all")
        present = [(f"input action {i}", a) for i, a in enumerate(actions) if a is not None]
        if not present:
            raise ValueError("at least one input must be acted on by the group (all input actions are None)")
        if output_action is not None:
            present.append(("the output action", output_action))
        first_role, first = present[0]
        self.group: FiniteGroup = first.group
        for role, action in present[1:]:
            if not _same_group(action.group, self.group):
                raise ValueError(f"all actions must be of one group; {first_role} is {_describe(self.group)} "
                                 f"but {role} is {_describe(action.group)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of group elements; got {chunk_size}")
        self.input_actions = actions
        self.output_action = output_action
        self.chunk_size = chunk_size

    def transformed_inputs(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Each input as its |G| transformed copies ``[|G|, B, ...]`` (left-alone inputs repeated)."""
        if len(inputs) != len(self.input_actions):
            raise ValueError(f"expected {len(self.input_actions)} positional input(s), one per input action; "
                             f"got {len(inputs)}")
        return [self._repeat(x) if action is None else action.transform_all(x)
                for x, action in zip(inputs, self.input_actions, strict=True)]

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.group.order, *x.shape)

    def _run_backbone(self, module: nn.Module, stacked: list[torch.Tensor], **kwargs) -> torch.Tensor:
        """Apply ``module`` to ``[|G|, B, ...]`` inputs as one ``[|G|*B, ...]`` batch (or chunks of the group axis)."""
        order = self.group.order
        batch = stacked[0].shape[1]
        stacked_kwargs = {key: self._repeat(value) for key, value in _batched_keywords(kwargs, batch).items()}
        step = self.chunk_size or order
        outputs = []
        for start in range(0, order, step):
            count = min(step, order - start)
            flat = [x[start:start + step].reshape(count * batch, *x.shape[2:]) for x in stacked]
            flat_kwargs = {**kwargs, **{k: v[start:start + step].reshape(count * batch, *v.shape[2:])
                                        for k, v in stacked_kwargs.items()}}
            y = module(*flat, **flat_kwargs)
            if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != count * batch:
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"{type(module).__name__} must return a batch-first tensor: for a batch of "
                                 f"{count} group elements x {batch} examples it should have leading axis "
                                 f"{count * batch}; got {shape}")
            outputs.append(y.reshape(count, batch, *y.shape[1:]))
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

    ``lambda_net`` maps a batch to one unnormalised score per example (``[N]`` or ``[N, 1]``); softplus makes it
    positive. With ``head`` given, the backbone is a feature extractor: ``lambda_net`` reads its features and
    ``head`` turns them into the output (the follow-up paper's arrangement). Otherwise ``lambda_net`` reads the
    transformed inputs.
    """

    def __init__(self, backbone: nn.Module, lambda_net: nn.Module, input_actions: InputActions, output_action=None,
                 head: nn.Module | None = None, chunk_size: int | None = None):
        super().__init__(backbone, input_actions, output_action, chunk_size)
        if not isinstance(lambda_net, nn.Module):
            raise TypeError(f"lambda_net must be an nn.Module; got {type(lambda_net).__name__}")
        if head is not None and not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module or None; got {type(head).__name__}")
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
        if scores[0, 0].numel() != 1:
            raise ValueError(f"lambda_net must return one score per example ([N] or [N, 1]); got "
                             f"{tuple(scores.shape[2:])} per example")
        scores = scores.reshape(self.group.order, -1)
        weights = F.softplus(scores) + 1e-6  # strictly positive, so the normalisation is always defined
        weights = weights / weights.sum(dim=0, keepdim=True)
        return self._map_back(outputs), weights

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        outputs, weights = self.outputs_and_weights(*inputs, **kwargs)
        return (weights.reshape(*weights.shape, *([1] * (outputs.dim() - 2))) * outputs).sum(dim=0)


class EquiZero(_GroupBatched):
    """Pick, per example, the element whose (mapped-back) output minimises ``proxy``; return that output.

    ``proxy`` is a name from :data:`equitune.core.proxies.PROXIES` (``"entropy"``, ``"max_prob"``,
    ``"max_log_prob"``: each picks the most confident element, averaging over positions), a
    :class:`~equitune.core.proxies.ProxyScore` (e.g. with a padding mask) or a function
    ``[|G|, B, ...] -> [|G|, B]`` where lower is better. For an equivariant model the proxy must not change when
    the output action moves an output (entropy and max-probability ignore a permutation of the vocabulary).
    Ties go to the lowest element index; an input fixed by an element ties exactly with its image (equal copies share
    the first copy's score), so the choice never depends on the batch. In training mode the gradient is the equitune average's
    (straight-through estimator), since the argmin itself has no gradient.
    """

    def __init__(self, backbone: nn.Module, input_actions: InputActions, output_action=None,
                 proxy: str | Callable[[torch.Tensor], torch.Tensor] = "entropy", chunk_size: int | None = None,
                 straight_through: bool = True):
        super().__init__(backbone, input_actions, output_action, chunk_size)
        if isinstance(proxy, str):
            if proxy not in PROXIES:
                raise ValueError(f"unknown equizero proxy {proxy!r}; allowed: {', '.join(PROXIES)} or a function")
            proxy = ProxyScore(proxy)
        elif not callable(proxy):
            raise TypeError(f"proxy must be one of {', '.join(PROXIES)} or a function; got {type(proxy).__name__}")
        self.proxy = proxy
        self.straight_through = straight_through

    def select(self, outputs: torch.Tensor,
               transformed: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen element per example ``[B]`` and its output ``[B, ...]`` from stacked outputs ``[|G|, B, ...]``.
        ``transformed``: the acted-on inputs ``[|G|, B, ...]``; copies equal to an earlier copy take its score."""
        with torch.no_grad():
            scores = self.proxy(outputs)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != tuple(outputs.shape[:2]):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"proxy must return one score per element and example {list(outputs.shape[:2])}; "
                             f"got {shape}")
        if len(transformed):
            scores = share_scores_of_identical_copies(transformed, scores)
        chosen = scores.argmin(dim=0)
        return chosen, outputs[chosen, torch.arange(outputs.shape[1], device=outputs.device)]

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        stacked = self.transformed_inputs(*inputs)
        outputs = self._map_back(self._run_backbone(self.backbone, stacked, **kwargs))
        acted = [x for x, action in zip(stacked, self.input_actions, strict=True) if action is not None]
        _, selected = self.select(outputs, acted)
        if self.training and self.straight_through:
            average = outputs.mean(dim=0)
            return average + (selected - average).detach()
        return selected
