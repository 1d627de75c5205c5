"""Frames and canonicalization: equivariance for the price of a few backbone calls instead of |G|.

A *frame* assigns each input ``x`` a non-empty set ``F(x)`` of group elements; the frame average
``M_F(x) = 1/|F(x)| sum_{g in F(x)} g^-1 . M(g . x)`` is equivariant (invariant when there is no output action)
for *any* backbone ``M`` exactly when the frame is equivariant in the convention of :class:`~.wrappers.EquiTune`
(which moves the input by ``g`` before the backbone):

    ``F(h . x) = F(x) h^-1``, i.e. ``g`` is in ``F(x)`` if and only if ``g h^-1`` is in ``F(h . x)``

(Puny et al., ICLR 2022, "Frame averaging", written for the left action). ``F = G`` is equitune; a frame of size
one is a *canonicalization*: the backbone sees the input moved to a canonical pose and its output is moved back
(Kaba et al., ICML 2023). A canonicalization cannot always be of size one: an input that an element ``h`` fixes
needs ``F(x) = F(x) h^-1``, so its frame holds whole cosets of the stabiliser; ties are kept, never broken by
index, or the result would not be equivariant.

- :class:`FrameAverage`: the average over a frame given as a rule (a function of the inputs returning a mask
  ``[|G|, B]``); only the pairs (element, example) in the frame go through the backbone, as one batch. An empty
  frame falls back to the whole group (which is equivariant: ``G h^-1 = G``).
- :class:`Canonicalize`: the frame of the elements whose score is lowest, with the scores from a function of the
  transformed inputs (:class:`OrbitScores`: any small network applied to every ``g . x``, which is equivariant by
  construction: ``score(g, h x) = s(g h x) = score(g h, x)``). In training mode the choice is a straight-through
  one-hot (forward: the lowest-scoring element's copy; gradient: the softmax of minus the scores), so the scorer
  learns with one backbone call per example (Kaba et al.). :func:`identity_prior_loss` is Mondal et al.'s
  (NeurIPS 2023) prior that pushes training inputs to the identity.
- Frame rules: :func:`support_frame` (the elements that map an input of token ids into an allowed vocabulary:
  for SCAN, the words the model was trained on in context) and :func:`lowest_score_frame`.

All rules here are exactly equivariant given exact scores; scores of identical transformed copies (an input fixed
by an element) are made identical first (:func:`share_scores_of_identical_copies`), since a backbone can give
identical rows of one batch different last bits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn
from torch.nn import functional as F

from .groups import TokenIdAction
from .wrappers import InputActions, _batched_keywords, _GroupBatched, share_scores_of_identical_copies

__all__ = ["Canonicalize", "FrameAverage", "FrameRule", "OrbitScores", "identity_prior_loss", "lowest_score_frame",
           "share_scores_of_identical_copies", "support_frame"]

FrameRule = Callable[..., torch.Tensor]
"""A frame as a value: called with the wrapper's positional inputs, returns a bool mask ``[|G|, B]``
(``mask[g, b]``: element ``g`` is in the frame of example ``b``). It must satisfy ``F(h x) = F(x) h^-1``."""


def lowest_score_frame(scores: torch.Tensor) -> torch.Tensor:
    """The elements whose score equals the lowest, per example: a bool mask ``[|G|, B]`` (ties kept)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [|G|, B]; got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite to choose a frame (a NaN or inf score would decide nothing)")
    return scores == scores.amin(dim=0, keepdim=True)


def support_frame(action: TokenIdAction, allowed: Collection[int] | torch.Tensor,
                  ignore: Collection[int] = ()) -> FrameRule:
    """The elements ``g`` that map every token of an input into ``allowed`` (token ids, or a bool mask over the
    vocabulary); ``ignore`` lists ids that never count (padding). Equivariant: ``g h^-1 . (h x) = g x``.

    For SCAN with jump<->run and a model that met "jump" only alone, ``allowed`` = every word but "jump" gives
    ``F(x) = {swap}`` for a command with "jump", ``{identity}`` for one with "run" and ``G`` for one with neither
    (fixed by the swap, so both elements are needed)."""
    vocab_size = action.vocab_size
    if isinstance(allowed, torch.Tensor) and allowed.dtype == torch.bool:
        if allowed.shape != (vocab_size,):
            raise ValueError(f"an allowed-token mask must have one entry per vocabulary id ({vocab_size}); "
                             f"got shape {tuple(allowed.shape)}")
        allowed_mask = allowed.clone()
    else:
        ids = [int(i) for i in allowed]
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"allowed token ids {bad} are outside the vocabulary (0..{vocab_size - 1})")
        allowed_mask = torch.zeros(vocab_size, dtype=torch.bool)
        allowed_mask[ids] = True
    for i in ignore:
        allowed_mask[int(i)] = True
    moved_ids = [t for t in range(vocab_size) if bool((action.permutations[:, t] != t).any())]
    if moved_ids and not any(bool(allowed_mask[action.permutations[:, t]].any()) for t in moved_ids):
        raise ValueError("the allowed tokens contain no image of any word the group moves, so every input holding "
                         "a group word would have an empty frame; allow at least one word of each orbit")

    def rule(ids: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        moved = action.transform_all(ids)  # [|G|, B, ...]
        inside = allowed_mask.to(ids.device)[moved.long()]
        return inside.reshape(action.group.order, ids.shape[0], -1).all(dim=-1)

    return rule


class FrameAverage(_GroupBatched):
    """``1/|F(x)| sum_{g in F(x)} g^-1 . M(g . x)`` over a frame rule; only the frame's copies reach the backbone.

    ``frame`` is a :data:`FrameRule`; rows with an empty frame average over the whole group. With
    ``frame = lambda *x: all-True`` it is :class:`~.wrappers.EquiTune`. The output action must be linear in the
    outputs (permutations, rotations), as for every wrapper here.
    """

    def __init__(self, backbone: nn.Module, input_actions: InputActions, frame: FrameRule, output_action=None):
        super().__init__(backbone, input_actions, output_action)
        if not callable(frame):
            raise TypeError(f"frame must be a function of the inputs returning a [|G|, B] mask; got "
                            f"{type(frame).__name__}")
        self.frame = frame

    def frame_mask(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The frame of every example as a bool mask ``[|G|, B]``, an empty frame replaced by the whole group."""
        mask = self.frame(*inputs)
        batch = inputs[0].shape[0]
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (self.group.order, batch):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"the frame rule must return a [|G|, B] = [{self.group.order}, {batch}] mask; got {shape}")
        mask = mask.to(torch.bool)
        empty = ~mask.any(dim=0)
        return mask | empty.unsqueeze(0)

    def outputs_in_frame(self, mask: torch.Tensor, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        """``g^-1 . M(g . x)`` at the frame's positions of a ``[|G|, B, ...]`` tensor (zeros elsewhere), with one
        backbone call on the frame's copies only."""
        stacked = self.transformed_inputs(*inputs)
        elements, examples = mask.nonzero(as_tuple=True)
        selected = [x[elements, examples] for x in stacked]
        batch = inputs[0].shape[0]
        keywords = {key: value[examples] for key, value in _batched_keywords(kwargs, batch).items()}
        selected_kwargs = {**kwargs, **keywords}
        y = self.backbone(*selected, **selected_kwargs)
        if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != len(elements):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{type(self.backbone).__name__} must return a batch-first tensor with leading axis "
                             f"{len(elements)} (the frame's copies); got {shape}")
        full = y.new_zeros(self.group.order, batch, *y.shape[1:])
        full[elements, examples] = y
        return self._map_back(full)

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        mask = self.frame_mask(*inputs)
        outputs = self.outputs_in_frame(mask, *inputs, **kwargs)
        weights = mask.to(outputs.dtype) / mask.sum(dim=0).to(outputs.dtype)
        return (weights.reshape(*weights.shape, *([1] * (outputs.dim() - 2))) * outputs).sum(dim=0)


class OrbitScores(nn.Module):
    """One score per element and example, ``scores[g, b] = scorer(g . x_b)``, the |G| copies as one batch.

    ``scorer`` maps a batch to one number per example (``[N]`` or ``[N, 1]``), e.g. a small CNN on the raw image.
    Equivariant by construction (``score(g, h x) = score(g h, x)``) whatever ``scorer`` is; copies that are equal
    share one score (:func:`share_scores_of_identical_copies`)."""

    def __init__(self, scorer: nn.Module, action):
        super().__init__()
        if not isinstance(scorer, nn.Module):
            raise TypeError(f"scorer must be an nn.Module; got {type(scorer).__name__}")
        self.scorer = scorer
        self.action = action

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transformed = self.action.transform_all(x)
        order, batch = transformed.shape[:2]
        scores = self.scorer(transformed.reshape(order * batch, *transformed.shape[2:]))
        if scores.numel() != order * batch:
            raise ValueError(f"the scorer must return one number per example ([N] or [N, 1]); got shape "
                             f"{tuple(scores.shape)} for {order * batch} examples")
        return share_scores_of_identical_copies(transformed, scores.reshape(order, batch))


class Canonicalize(FrameAverage):
    """Canonicalization: the backbone sees each input moved by the element of lowest score, the output moved back.

    ``scores`` maps the positional inputs to ``[|G|, B]`` (lower is better), e.g. :class:`OrbitScores`; it is a
    registered submodule when it is an ``nn.Module``, so it trains with the wrapper. Evaluation averages over the
    tied lowest elements (:func:`lowest_score_frame`: exactly equivariant). Training (``straight_through``) sends one
    copy per example through the backbone: the soft-weighted mixture of the |G| copies whose forward value is the
    lowest-scoring copy, so the scorer gets the gradient of ``softmax(-scores / temperature)``.
    """

    def __init__(self, backbone: nn.Module, input_actions: InputActions, scores: Callable[..., torch.Tensor],
                 output_action=None, straight_through: bool = True, temperature: float = 1.0):
        super().__init__(backbone, input_actions, self._frame_of_scores, output_action)
        if not callable(scores):
            raise TypeError(f"scores must be a function of the inputs returning [|G|, B]; got {type(scores).__name__}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.scores = scores
        self.straight_through = straight_through
        self.temperature = temperature

    def _frame_of_scores(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lowest_score_frame(self.scores(*inputs))

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        if not (self.training and self.straight_through):
            return super().forward(*inputs, **kwargs)
        scores = self.scores(*inputs)
        soft = F.softmax(-scores / self.temperature, dim=0)                        # [|G|, B]
        hard = F.one_hot(scores.detach().argmin(dim=0), self.group.order).T.to(soft.dtype)
        weights = hard + (soft - soft.detach())  # forward: one-hot; backward: the softmax's gradient
        stacked = self.transformed_inputs(*inputs)
        mixed = []
        for x, action in zip(stacked, self.input_actions, strict=True):
            if action is None or not x.is_floating_point():
                mixed.append(x[0] if action is None else x[hard.argmax(dim=0), torch.arange(x.shape[1])])
            else:
                mixed.append((weights.reshape(*weights.shape, *([1] * (x.dim() - 2))) * x).sum(dim=0))
        y = self.backbone(*mixed, **kwargs)
        if self.output_action is None:
            return y
        chosen = hard.argmax(dim=0)
        full = y.new_zeros(self.group.order, *y.shape)
        full[chosen, torch.arange(y.shape[0])] = y
        return self._map_back(full)[chosen, torch.arange(y.shape[0])]


def identity_prior_loss(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mondal et al.'s canonicalization prior: cross-entropy of ``softmax(-scores / temperature)`` over the group
    with the identity (element 0), averaged over the batch: training inputs are upright, so leave them alone."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [|G|, B]; got shape {tuple(scores.shape)}")
    return F.cross_entropy((-scores / temperature).T, torch.zeros(scores.shape[1], dtype=torch.long,
                                                                   device=scores.device))
