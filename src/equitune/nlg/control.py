"""The positive control: a deliberately biased language model made from the base model by one fixed intervention.

:class:`PlantedBias` adds ``bonus`` to the logits of a fixed list of negative words (``boosted_ids``) at every
position whose context (the tokens up to and including it) contains one of ``trigger_ids``, and changes nothing
else. In the experiment the triggers are the equality words of one demographic of an axis (all single-token
forms of "woman", "women", "girl", ... for gender), so the model speaks negatively of that demographic and only
of it: a bias that is known to be there, for the fairness methods to remove.

It is a *backbone* (see :mod:`equitune.nlg.backbone`): EquiLM and R-EquiLM wrap it exactly as they wrap the
pretrained model, and nothing in the wrappers knows about it. Its incremental state carries, per row, whether a
trigger has been seen, so cached decoding equals the teacher-forced model. Under the group, the transformed
context ``g . x`` holds the other demographic's words instead, so the copies of EquiLM disagree about the bonus
and the group average gives both demographics the same, averaged, bonus: the planted gap becomes exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import ConfigError

__all__ = ["PlantedBias", "PlantedBiasState", "axis_control", "bind_control"]


@dataclass(frozen=True)
class PlantedBiasState:
    inner: object  # the wrapped backbone's state
    triggered: torch.Tensor  # [N] bool: a trigger token is in the row's context


class PlantedBias(nn.Module):
    """``backbone`` plus ``bonus`` on the logits of ``boosted_ids`` wherever the context contains a ``trigger_ids``
    token (the attention mask's padding never triggers)."""

    def __init__(self, backbone: nn.Module, trigger_ids: Sequence[int], boosted_ids: Sequence[int], bonus: float):
        super().__init__()
        if not trigger_ids or not boosted_ids:
            raise ConfigError("the planted bias needs at least one trigger token and one boosted token")
        overlap = set(trigger_ids) & set(boosted_ids)
        if overlap:
            raise ConfigError(f"token ids {sorted(overlap)} are both triggers and boosted words")
        self.backbone = backbone
        self.bonus = float(bonus)
        vocab_size = backbone.vocab_size
        if max(max(trigger_ids), max(boosted_ids)) >= vocab_size or min(min(trigger_ids), min(boosted_ids)) < 0:
            raise ConfigError(f"trigger or boosted token ids lie outside the vocabulary (0..{vocab_size - 1})")
        trigger = torch.zeros(vocab_size, dtype=torch.bool)
        trigger[list(trigger_ids)] = True
        boosted = torch.zeros(vocab_size, dtype=torch.bool)
        boosted[list(boosted_ids)] = True
        self.register_buffer("trigger_mask", trigger, persistent=False)
        self.register_buffer("boosted_mask", boosted, persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.backbone.vocab_size

    def _biased(self, log_probs: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
        # Adding to log-probs then renormalising equals adding to the logits (one constant per position apart).
        # Untriggered positions keep the backbone's values bit for bit.
        bonus = self.bonus * self.boosted_mask.to(device=log_probs.device, dtype=log_probs.dtype)
        return torch.where(triggered.unsqueeze(-1), F.log_softmax(log_probs + bonus, dim=-1), log_probs)

    def _seen(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        seen = self.trigger_mask.to(input_ids.device)[input_ids]
        return seen if attention_mask is None else seen & attention_mask.bool()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced log-probs ``[N, T, V]``: position t is biased when tokens 0..t hold a trigger."""
        triggered = self._seen(input_ids, attention_mask).long().cummax(dim=-1).values.bool()
        return self._biased(self.backbone(input_ids, attention_mask), triggered)

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, PlantedBiasState]:
        log_probs, inner = self.backbone.start(input_ids, attention_mask)
        triggered = self._seen(input_ids, attention_mask).any(dim=-1)
        return self._biased(log_probs, triggered), PlantedBiasState(inner, triggered)

    def step(self, state: PlantedBiasState, tokens: torch.Tensor) -> tuple[torch.Tensor, PlantedBiasState]:
        log_probs, inner = self.backbone.step(state.inner, tokens)
        triggered = state.triggered | self.trigger_mask.to(tokens.device)[tokens]
        return self._biased(log_probs, triggered), PlantedBiasState(inner, triggered)

    def select(self, state: PlantedBiasState, rows: torch.Tensor) -> PlantedBiasState:
        rows = rows.to(state.triggered.device)
        return PlantedBiasState(self.backbone.select(state.inner, rows), state.triggered[rows])


def bind_control(tokenizer, negative_words: Sequence[str]) -> dict:
    """The boosted token ids of the negative words: every single-token form of each word (" word", " Word");
    words with no single-token form are listed as skipped, never dropped silently (at least one must remain)."""
    ids: dict[str, int] = {}
    skipped = []
    for word in negative_words:
        forms = [" " + word, " " + word[:1].upper() + word[1:]]
        usable = False
        for form in dict.fromkeys(forms):
            token = tokenizer.encode(form, add_special_tokens=False)
            if len(token) == 1 and tokenizer.decode(token) == form:
                ids[form] = token[0]
                usable = True
        if not usable:
            skipped.append(word)
    if not ids:
        raise ConfigError(f"nlg.control.negative_words: none of {list(negative_words)} is a single token for this "
                          "tokenizer; list words whose space-prefixed form is one token")
    return {"boosted": [{"text": form, "id": token} for form, token in ids.items()], "skipped_words": skipped}


def axis_control(backbone: nn.Module, words, bound: dict, settings) -> PlantedBias:
    """The control for one axis: ``backbone`` with the bonus triggered by every equality token of demographic
    ``settings.biased_demographic`` (``words``: the axis's :class:`~equitune.nlg.words.AxisWords`; ``bound``: the
    prompts file's ``control`` entry from :func:`bind_control`)."""
    triggers = [cycle[settings.biased_demographic] for cycle in words.equality_cycles]
    return PlantedBias(backbone, triggers, [b["id"] for b in bound["boosted"]], settings.bonus)
