"""How equituning combines the |G| copies' per-step distributions (``scan.tune.combination``).

- ``log_prob_mean`` (the paper's, the default): the mean of the mapped-back log-probabilities, i.e. the normalised
  geometric mean of the copies' distributions, a product of experts: a token wins only if no copy finds it
  unlikely.
- ``prob_mean``: the log of the mean of the probabilities, a mixture: one confident copy can carry a token that
  the others find unlikely.

Both are exactly equivariant (they treat every copy alike). The same rule serves greedy decoding (the argmax of the
combined scores) and equitune's training loss (the negative log-likelihood of the combined scores; for
``prob_mean`` a proper log-probability, so the loss is the mixture's). A ``mask`` ``[|G|, B]`` restricts the
combination to each example's frame (:func:`equitune.core.frames.support_frame`): frame decoding, and the
training loss of the ``frame`` method (:func:`frame_wrapper`: the model tuned through its own frame).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..core.frames import FrameAverage
from ..core.wrappers import EquiTune

__all__ = ["COMBINATIONS", "Combination", "ProbMeanEquiTune", "ProbMeanFrameAverage", "combine_copies",
           "equitune_wrapper", "frame_wrapper"]

COMBINATIONS = ("log_prob_mean", "prob_mean")
Combination = Literal["log_prob_mean", "prob_mean"]


def combine_copies(stacked: torch.Tensor, combination: str = "log_prob_mean",
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Combine mapped-back log-probabilities ``[|G|, B, ..., V]`` over the group axis into ``[B, ..., V]`` (a
    decoding step's ``[|G|, B, V]``, or a teacher-forced batch's ``[|G|, B, T, V]``).

    ``mask`` (bool ``[|G|, B]``, every column non-empty): only the marked copies count. With an all-True mask the
    result is bitwise the unmasked one (a sum of the kept rows divided by their count is how torch takes a mean)."""
    if combination not in COMBINATIONS:
        raise ValueError(f"unknown combination {combination!r}; allowed: {', '.join(COMBINATIONS)}")
    if mask is None:
        if combination == "log_prob_mean":
            return stacked.mean(dim=0)
        return stacked.logsumexp(dim=0) - math.log(stacked.shape[0])
    trailing = [1] * (stacked.dim() - 2)
    kept = mask.reshape(*mask.shape, *trailing)  # [|G|, B, 1, ...]
    count = mask.sum(dim=0).to(stacked.dtype).reshape(mask.shape[1], *trailing)  # [B, 1, ...]
    if combination == "log_prob_mean":
        return torch.where(kept, stacked, 0.0).sum(dim=0) / count
    return torch.where(kept, stacked, float("-inf")).logsumexp(dim=0) - count.log()


class ProbMeanEquiTune(EquiTune):
    """:class:`~equitune.core.wrappers.EquiTune` whose output is the log of the mean of the copies'
    probabilities (``combination: prob_mean``) instead of the mean of their log-probabilities."""

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        return combine_copies(self.group_outputs(*inputs, **kwargs), "prob_mean")


def equitune_wrapper(combination: str):
    """The wrapper class that averages the copies by ``combination``."""
    if combination not in COMBINATIONS:
        raise ValueError(f"unknown combination {combination!r}; allowed: {', '.join(COMBINATIONS)}")
    return EquiTune if combination == "log_prob_mean" else ProbMeanEquiTune


class ProbMeanFrameAverage(FrameAverage):
    """:class:`~equitune.core.frames.FrameAverage` whose output is the log of the mean of the frame's copies'
    probabilities (``combination: prob_mean``), as :func:`combine_copies` with the frame as mask."""

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        mask = self.frame_mask(*inputs)
        return combine_copies(self.outputs_in_frame(mask, *inputs, **kwargs), "prob_mean", mask)


def frame_wrapper(combination: str):
    """The frame-averaging wrapper class that combines the frame's copies by ``combination`` (the ``frame``
    method's training forward: only each command's frame copies go through the model, as one batch)."""
    if combination not in COMBINATIONS:
        raise ValueError(f"unknown combination {combination!r}; allowed: {', '.join(COMBINATIONS)}")
    return FrameAverage if combination == "log_prob_mean" else ProbMeanFrameAverage
