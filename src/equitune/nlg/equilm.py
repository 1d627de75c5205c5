"""EquiLM and R-EquiLM: group-averaged next-token distributions over any backbone (see :mod:`.backbone`).

With a group G permuting the equality words (man <-> woman, ...) and ``pi_g`` its action on token ids:

- EquiLM: ``log p(. | x) = log_softmax( 1/|G| sum_g g^-1 . log_softmax(M(g . x)) )``, i.e. the |G| transformed
  contexts' next-token log-probabilities, each mapped back to the original frame, averaged. Averaging the
  log-softmax outputs gives the same distribution as averaging raw logits (they differ by one constant per
  context, which the final softmax removes) and is numerically safer. Then ``p(g.y | g.x) = p(y | x)``.
- R-EquiLM: the same, except the general words (he/she/his/...) take the untransformed (identity) context's
  log-probability; the mixed vector is renormalised. Mixing normalised log-probs keeps the result independent
  of each context's arbitrary logit offset.
- base: the backbone itself (decoded through the same code with one context copy).
- The averaging rule is ``nlg.group_average`` (:data:`AVERAGES`): ``log_probs`` (above, the default) or ``probs``,
  ``log (1/|G| sum_g exp(g^-1 . log_softmax(M(g . x))))``, a mixture of the copies' distributions. Both are
  exactly equivariant (any symmetric function of the group's mapped-back copies is).
- CanonLM (:mod:`.canon`) reaches the same identity with one copy: the context's canonical frame.

``M`` is a backbone: the pretrained LM (:class:`~equitune.nlg.backbone.CausalLM`) or the positive control built on
it (:class:`~equitune.nlg.control.PlantedBias`); nothing here depends on which. :class:`FairLM` is the
teacher-forced model (the |G| copies run as one batch through the core :class:`EquiTune` wrapper); sampling lives
in :mod:`equitune.nlg.decoding`. Sampling is top-k by inverse CDF on per-row uniform numbers given by the caller,
so a row's sample depends only on its own distribution and its own random numbers: the paired demographics share
the numbers, which makes EquiLM's samples exact group images of each other.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.groups import VocabPermutation
from ..core.wrappers import EquiTune
from .backbone import as_backbone

__all__ = ["AVERAGES", "FairLM", "combine_group_log_probs", "group_average", "sample_top_k", "stop_token_mask"]


AVERAGES = ("log_probs", "probs")
"""How EquiLM combines the |G| copies: ``log_probs`` averages log-probabilities (a normalised geometric mean of the
distributions, the default and the paper's logit averaging); ``probs`` averages probabilities (a mixture)."""


def group_average(rows: torch.Tensor, average: str = "log_probs") -> torch.Tensor:
    """The group average of ``[|G|, ..., V]`` mapped-back log-probs, as (unnormalised) log-probs ``[..., V]``."""
    if average == "log_probs":
        return rows.mean(dim=0)
    if average == "probs":
        return torch.logsumexp(rows, dim=0) - math.log(rows.shape[0])
    raise ValueError(f"unknown group average {average!r}; allowed: {', '.join(AVERAGES)}")


def combine_group_log_probs(rows: torch.Tensor, method: str, general_mask: torch.Tensor | None = None,
                            average: str = "log_probs") -> torch.Tensor:
    """``[|G|, ..., V]`` mapped-back log-probs (row 0 = identity) -> the method's log-probs ``[..., V]``;
    ``average``: see :data:`AVERAGES`."""
    if method == "base":
        return rows[0]
    averaged = group_average(rows, average)
    if method == "equilm":
        return F.log_softmax(averaged, dim=-1)
    if method == "r_equilm":
        if general_mask is None:
            raise ValueError("r_equilm needs the general words' mask")
        return F.log_softmax(torch.where(general_mask.to(rows.device), rows[0], averaged), dim=-1)
    raise ValueError(f"unknown method {method!r}; allowed: base, equilm, r_equilm")


class FairLM(nn.Module):
    """Teacher-forced base / EquiLM / R-EquiLM: ``(input_ids, attention_mask) -> log-probs [B, T, V]``.

    Built on the core :class:`EquiTune` wrapper (token ids acted on, the mask left alone, scores mapped back by
    ``g^-1``), so the |G| copies go through the backbone as one batch. Used for the fairness check.
    """

    def __init__(self, backbone: nn.Module, method: str, permutation: VocabPermutation | None = None,
                 general_mask: torch.Tensor | None = None, average: str = "log_probs"):
        """``backbone``: a backbone, or a transformers causal LM (wrapped in a :class:`CausalLM`)."""
        super().__init__()
        self.average = average
        if method != "base" and permutation is None:
            raise ValueError(f"method {method!r} needs a vocabulary permutation")
        self.method = method
        self.backbone = as_backbone(backbone)
        self.general_mask = general_mask
        # The base method needs the untransformed copy only: no group copies are run for it.
        self.grouped = None if permutation is None or method == "base" else EquiTune(
            self.backbone, (permutation.on_ids, None), output_action=permutation.on_scores)

    def group_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mapped-back log-probs of every transformed copy ``[|G|, B, T, V]`` (row 0 = identity = base)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if self.grouped is None:
            return self.backbone(input_ids, mask).unsqueeze(0)
        return self.grouped.group_outputs(input_ids, mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return combine_group_log_probs(self.group_rows(input_ids, attention_mask), self.method, self.general_mask,
                                       self.average)


def sample_top_k(log_probs: torch.Tensor, k: int, uniform: torch.Tensor) -> torch.Tensor:
    """Top-k sampling by inverse CDF: ``log_probs [B, V]``, ``uniform [B]`` in [0, 1) -> token ids ``[B]``."""
    top_log_probs, top_ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)  # sorted, most likely first
    cdf = F.softmax(top_log_probs.double(), dim=-1).cumsum(dim=-1)
    index = (cdf < uniform.double().unsqueeze(-1) * cdf[:, -1:]).sum(dim=-1).clamp(max=top_ids.shape[-1] - 1)
    return top_ids.gather(1, index.unsqueeze(1)).squeeze(1)


def stop_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """Tokens that end a sample: any token whose text contains a newline, and the special tokens (EOS...)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    count = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(count)])
    mask[[i for i, text in enumerate(texts) if "\n" in text]] = True
    special = [i for i in tokenizer.all_special_ids if i is not None and i < vocab_size]
    if tokenizer.eos_token_id is not None:
        special.append(tokenizer.eos_token_id)
    mask[special] = True
    return mask
