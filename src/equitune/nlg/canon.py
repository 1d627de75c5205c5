"""CanonLM: fair generation by canonicalization, one backbone call per token instead of |G|.

The frame of a context ``x`` is the group element that moves its *first* equality token to the canonical word of
that token's orbit (the first word of its cycle: demographic 0, e.g. " woman" -> " man"). The backbone sees the
moved context ``g* . x`` and its next-token distribution is moved back: ``p(. | x) = g*^-1 . M(g* . x)``. While
the context holds no equality token yet, every element fixes it, the frame is the whole group and the
distribution is the group average of ``M(x)`` (EquiLM's, with one backbone row).

Why this is exact (the frame is equivariant, ``F(h . x) = F(x) h^-1`` in the convention of
:mod:`equitune.core.frames`): the group maps equality tokens to equality tokens and fixes every other token, so
the first equality token of ``h . x`` sits where ``x``'s does and is ``h`` applied to it; the element sending it to
the canonical word is ``g* h^-1``. Then ``g* h^-1 . (h . x) = g* . x``: both contexts feed the backbone the same
ids, and ``p(h.y | h.x) = p(y | x)`` holds exactly, for any backbone. The frame is of size one only when each
orbit holds one canonical word and no group element fixes an equality token (the cyclic word groups here: every
cycle has the group's order); :class:`CanonicalFrame` refuses anything else.

This is not "replace every equality word by its cycle's first word": that map is not a group element (it merges
"the man and the woman" into "the man and the man") and there is no element to move the sample back with.

Causality: position t's frame depends on tokens ``0..t`` only, so positions before the first equality token use the
whole-group average; a frame read from the whole window would tell the model which demographic comes later.

Sampling draws the token in the canonical frame and moves it back, so with shared random numbers the samples of
``x`` and ``h . x`` are exact group images, and they share every backbone row with the base model's samples of the
canonical demographic (same context, same tokens fed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.groups import VocabPermutation
from .backbone import as_backbone
from .equilm import combine_group_log_probs

__all__ = ["CanonLM", "CanonicalFrame"]


class CanonicalFrame:
    """The canonicalizing element of every token the group moves: ``element[t]`` sends ``t`` to its orbit's
    canonical token (-1 for tokens the group fixes); ``inverse_ids[g]`` undoes ``permutations[g]`` on ids."""

    def __init__(self, permutation: VocabPermutation, canonical_ids: Sequence[int]):
        perms = permutation.permutations
        vocab_size = perms.shape[1]
        moved = (perms != torch.arange(vocab_size)).any(dim=0)
        canonical = torch.zeros(vocab_size, dtype=torch.bool)
        canonical[list(canonical_ids)] = True
        if bool((canonical & ~moved).any()):
            fixed = int((canonical & ~moved).nonzero()[0])
            raise ValueError(f"canonical token id {fixed} is not moved by the group; canonical tokens must be "
                             "equality tokens (one per orbit)")
        reaching = canonical[perms]  # [|G|, V]: element g sends token t to a canonical token
        count = reaching.sum(dim=0)
        bad = moved & (count != 1)
        if bool(bad.any()):
            token = int(bad.nonzero()[0])
            raise ValueError(f"token id {token}: {int(count[token])} group elements send it to a canonical token; a "
                             "frame of one element needs exactly one canonical token per orbit and a group that fixes "
                             "no equality token (cycles as long as the group's order)")
        self.permutation = permutation
        self.element = torch.where(moved, reaching.long().argmax(dim=0), torch.full_like(count, -1))
        self.inverse_ids = perms.argsort(dim=1)  # inverse_ids[g, perms[g, t]] = t

    @classmethod
    def of_cycles(cls, permutation: VocabPermutation, cycles: Sequence[Sequence[int]]) -> CanonicalFrame:
        """Canonical token = the first token of each cycle (demographic 0 of the axis)."""
        return cls(permutation, [cycle[0] for cycle in cycles])

    def first_element(self, ids: Sequence[int]) -> int:
        """The frame's element of a context: the canonicalizing element of its first equality token (-1: none)."""
        for token in ids:
            element = int(self.element[token])
            if element >= 0:
                return element
        return -1

    def canonical_context(self, ids: Sequence[int]) -> tuple[int, ...]:
        """``g* . ids`` (``ids`` itself when no token is moved)."""
        element = self.first_element(ids)
        if element < 0:
            return tuple(ids)
        return tuple(self.permutation.permutations[element][torch.tensor(ids, dtype=torch.long)].tolist())

    def position_elements(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T]``: the frame's element of each prefix ``ids[b, :t+1]`` (-1 before the first equality token)."""
        element = self.element.to(ids.device)[ids]
        moved = element >= 0
        if attention_mask is not None:
            moved &= attention_mask.bool()
        first = moved.long().argmax(dim=-1, keepdim=True)  # the first moved position (0 when there is none)
        return torch.where(moved.cumsum(dim=-1) > 0, element.gather(-1, first), torch.full_like(element, -1))


class CanonLM(nn.Module):
    """Teacher-forced CanonLM: ``(input_ids, attention_mask) -> log-probs [B, T, V]`` with one backbone call on the
    canonical copies (see the module docstring). ``average`` is the group-average rule of the positions before
    the first equality token (:func:`~equitune.nlg.equilm.combine_group_log_probs`)."""

    def __init__(self, backbone: nn.Module, frame: CanonicalFrame, average: str = "log_probs"):
        super().__init__()
        self.backbone = as_backbone(backbone)
        self.frame = frame
        self.average = average

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = self.frame.position_elements(input_ids, mask)
        perms = self.frame.permutation.permutations.to(input_ids.device)[positions[:, -1].clamp(min=0)]  # [B, V]
        canonical = perms.gather(1, input_ids.long())
        out = self.backbone(canonical, mask)
        back = out.gather(-1, perms.unsqueeze(1).expand_as(out))  # g*^-1 . y = y[..., pi_g*]
        free = positions < 0
        if bool(free.any()):
            order = self.frame.permutation.group.order
            copies = self.frame.permutation.on_scores.untransform_all(out.unsqueeze(0).expand(order, *out.shape))
            averaged = combine_group_log_probs(copies, "equilm", average=self.average)
            back = torch.where(free.unsqueeze(-1), averaged, back)
        return back
