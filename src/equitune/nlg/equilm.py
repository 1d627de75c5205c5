"""EquiLM and R-EquiLM: group-averaged next-token distributions, teacher-forced and with KV-cached decoding.

With a group G permuting the equality words (man <-> woman, ...) and ``pi_g`` its action on token ids:

- EquiLM: ``log p(. | x) = log_softmax( 1/|G| sum_g g^-1 . log_softmax(M(g . x)) )``, i.e. the |G| transformed
  contexts' next-token log-probabilities, each mapped back to the original frame, averaged. Averaging the
  log-softmax outputs gives the same distribution as averaging raw logits (they differ by one constant per
  context, which the final softmax removes) and is numerically safer. Then ``p(g.y | g.x) = p(y | x)``.
- R-EquiLM: the same, except the general words (he/she/his/...) take the untransformed (identity) context's
  log-probability; the mixed vector is renormalised. Mixing normalised log-probs keeps the result independent
  of each context's arbitrary logit offset.
- base: the pretrained model itself (decoded through the same code with one context copy).

The |G| contexts always run as one ``[|G|*B, ...]`` batch. :func:`generate` prefills the transformed contexts
once with a KV cache and then feeds one token per step: the token ``y`` sampled in the original frame is fed
to copy ``g`` as ``g . y``. Sampling is top-k by inverse CDF on per-row uniform numbers given by the caller, so a
row's sample depends only on its own distribution and its own seed (not on its batch neighbours): the paired
demographics share the numbers, which makes EquiLM's samples exact group images of each other.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core.groups import VocabPermutation
from ..core.wrappers import EquiTune

__all__ = ["FairLM", "Generation", "LMLogProbs", "combine_group_log_probs", "generate", "lm_vocab_size",
           "sample_top_k", "stop_token_mask"]


def lm_vocab_size(lm: nn.Module) -> int:
    """Size of the logits' last axis (may exceed the tokenizer's length, e.g. padded embeddings)."""
    return lm.get_output_embeddings().weight.shape[0]


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: the first real token gets position 0, as if the prompt had not been padded.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class LMLogProbs(nn.Module):
    """Backbone adapter: ``(input_ids [N, T], attention_mask [N, T]) -> next-token log-probs [N, T, V]``."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=_position_ids(attention_mask)).logits
        return F.log_softmax(logits, dim=-1)


def combine_group_log_probs(rows: torch.Tensor, method: str, general_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[|G|, ..., V]`` mapped-back log-probs (row 0 = identity) -> the method's log-probs ``[..., V]``."""
    if method == "base":
        return rows[0]
    averaged = rows.mean(dim=0)
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
    ``g^-1``), so the |G| copies go through the LM as one batch. Used for perplexity and for the fairness check.
    """

    def __init__(self, lm: nn.Module, method: str, permutation: VocabPermutation | None = None,
                 general_mask: torch.Tensor | None = None):
        super().__init__()
        if method != "base" and permutation is None:
            raise ValueError(f"method {method!r} needs a vocabulary permutation")
        self.method = method
        self.backbone = LMLogProbs(lm)
        self.general_mask = general_mask
        self.grouped = None if permutation is None else EquiTune(
            self.backbone, (permutation.on_ids, None), output_action=permutation.on_scores)

    def group_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mapped-back log-probs of every transformed copy ``[|G|, B, T, V]`` (row 0 = identity = base)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if self.grouped is None:
            return self.backbone(input_ids, mask).unsqueeze(0)
        return self.grouped.group_outputs(input_ids, mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return combine_group_log_probs(self.group_rows(input_ids, attention_mask), self.method, self.general_mask)


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


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, steps] sampled ids in the original frame; `pad_id` after the stop token
    lengths: torch.Tensor  # [B] tokens up to and including the stop token
    log_probs: torch.Tensor | None = None  # [B, steps, V] the method's distributions (when asked for)


def _cache_kwarg(lm: nn.Module) -> str:
    # transformers 5 renamed `past_key_values` to `cache`; accept either so any causal LM works.
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(output):
    return getattr(output, "cache", None) if getattr(output, "cache", None) is not None else output.past_key_values


@torch.no_grad()
def generate(lm: nn.Module, prompt_ids: torch.Tensor, attention_mask: torch.Tensor, method: str,
             permutation: VocabPermutation | None, uniform: torch.Tensor, *, top_k: int, stop_mask: torch.Tensor,
             pad_id: int, general_mask: torch.Tensor | None = None, return_log_probs: bool = False) -> Generation:
    """Sample up to ``uniform.shape[1]`` new tokens for left-padded prompts ``[B, L]`` with base/EquiLM/R-EquiLM.

    ``uniform [B, steps]``: the per-row random numbers (one per step). The |G| transformed contexts are
    prefilled once as one batch; each step feeds ``g . y`` to copy ``g`` through the KV cache.
    """
    batch, steps = prompt_ids.shape[0], uniform.shape[1]
    grouped = method != "base"
    if grouped and permutation is None:
        raise ValueError(f"method {method!r} needs a vocabulary permutation")
    if grouped and int(permutation.permutations[:, pad_id].ne(pad_id).sum()):
        raise ValueError("the pad token is moved by the group; pad with a token outside the equality words")
    order = permutation.group.order if grouped else 1
    device = prompt_ids.device
    ids = permutation.on_ids.transform_all(prompt_ids) if grouped else prompt_ids.unsqueeze(0)  # [G, B, L]
    mask = attention_mask.repeat(order, 1)
    positions = _position_ids(mask)
    cache_kwarg = _cache_kwarg(lm)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}
    output = lm(input_ids=ids.reshape(order * batch, -1), attention_mask=mask, position_ids=positions,
                use_cache=True, **keep)
    next_position = positions[:, -1:] + 1
    tokens = torch.full((batch, steps), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    kept_log_probs = []
    stop_mask = stop_mask.to(device)
    for step in range(steps):
        rows = F.log_softmax(output.logits[:, -1], dim=-1).reshape(order, batch, -1)
        if grouped:
            rows = permutation.on_scores.untransform_all(rows)
        log_probs = combine_group_log_probs(rows, method, general_mask)
        if return_log_probs:
            kept_log_probs.append(log_probs)
        token = sample_top_k(log_probs, top_k, uniform[:, step].to(device))
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens[:, step] = token
        lengths += (~finished).long()
        finished |= stop_mask[token]
        if bool(finished.all()) or step == steps - 1:
            break
        fed = permutation.on_ids.transform_all(token) if grouped else token.unsqueeze(0)  # [G, B]: g . y
        mask = torch.cat([mask, mask.new_ones(order * batch, 1)], dim=1)
        output = lm(input_ids=fed.reshape(order * batch, 1), attention_mask=mask, position_ids=next_position,
                    use_cache=True, **{cache_kwarg: _cache_of(output)})
        next_position = next_position + 1
    log_probs_out = torch.stack(kept_log_probs, dim=1) if return_log_probs else None
    return Generation(tokens, lengths, log_probs_out)
