"""Causal language models behind one small interface, so that EquiLM, the decoder and the control wrap any of them.

A *backbone* maps token ids to next-token log-probabilities, either teacher-forced or incrementally with a cache:

- ``forward(input_ids [N, T], attention_mask [N, T]) -> log-probs [N, T, V]`` (perplexity, the fairness check, and
  the core :class:`~equitune.core.wrappers.EquiTune` wrapper, which calls it on the |G| transformed copies);
- ``start(input_ids, attention_mask) -> (log-probs [N, V] at the last position, state)``: the prefill;
- ``step(state, tokens [N]) -> (log-probs [N, V], state)``: one new token per row;
- ``select(state, rows [R]) -> state``: the given rows of a state, in that order (repeats allowed). It never
  changes ``state`` itself, so one prefill can be expanded into many decoding batches;
- ``vocab_size``: the size of the last axis.

:class:`CausalLM` adapts a transformers causal LM; :class:`equitune.nlg.control.PlantedBias` is another backbone
built on top of one. Prompts are left padded: the first real token gets position 0.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CausalLM", "as_backbone", "cache_keyword", "cache_of", "lm_vocab_size", "position_ids"]


def lm_vocab_size(lm: nn.Module) -> int:
    """Size of the logits' last axis (may exceed the tokenizer's length, e.g. padded embeddings)."""
    return lm.get_output_embeddings().weight.shape[0]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: the first real token gets position 0, as if the prompt had not been padded.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_keyword(lm: nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept either so that any causal LM works."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _select_cache(cache, rows: torch.Tensor):
    """A new cache holding ``rows`` of ``cache`` (the original is left as it was)."""
    selected = copy.copy(cache)
    if hasattr(cache, "layers"):  # transformers >= 4.56: one object per layer, each selects its own tensors
        selected.layers = [copy.copy(layer) for layer in cache.layers]
    else:  # pragma: no cover - older cache classes
        selected = copy.deepcopy(cache)
    selected.batch_select_indices(rows)
    return selected


@dataclass(frozen=True)
class DecodeState:
    """A :class:`CausalLM`'s incremental state: the KV cache, the attention mask so far, the next positions."""

    cache: object
    attention_mask: torch.Tensor  # [N, L]
    next_position: torch.Tensor  # [N, 1]


class CausalLM(nn.Module):
    """A transformers causal LM as a backbone (see the module docstring); the LM's weights are not copied."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        parameters = inspect.signature(lm.forward).parameters
        self._cache_keyword = cache_keyword(lm)
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    @property
    def vocab_size(self) -> int:
        return lm_vocab_size(self.lm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        logits = self.lm(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        return F.log_softmax(logits, dim=-1)

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, DecodeState]:
        positions = position_ids(attention_mask)
        output = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                         **self._keep_last)
        state = DecodeState(cache_of(output), attention_mask, positions[:, -1:] + 1)
        return F.log_softmax(output.logits[:, -1], dim=-1), state

    def step(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, DecodeState]:
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(tokens.shape[0], 1)], dim=1)
        output = self.lm(input_ids=tokens.unsqueeze(1), attention_mask=mask, position_ids=state.next_position,
                         use_cache=True, **{self._cache_keyword: state.cache})
        return F.log_softmax(output.logits[:, -1], dim=-1), DecodeState(cache_of(output), mask, state.next_position + 1)

    def select(self, state: DecodeState, rows: torch.Tensor) -> DecodeState:
        rows = rows.to(state.attention_mask.device)
        return DecodeState(_select_cache(state.cache, rows), state.attention_mask[rows], state.next_position[rows])


def as_backbone(model: nn.Module) -> nn.Module:
    """``model`` itself when it already is a backbone (has ``start``/``step``/``select``), else a :class:`CausalLM`."""
    if all(hasattr(model, name) for name in ("start", "step", "select", "vocab_size")):
        return model
    return CausalLM(model)
