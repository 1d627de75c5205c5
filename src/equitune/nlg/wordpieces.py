"""How often the group's token swap acts on a piece of a longer word (issue 27, item 5).

EquiLM acts on token ids, not on words: the no-space form ``"man"`` is an equality token, so in
``" Gentle" + "man"`` the swap writes ``" Gentlewoman"``, and ``" man" + "ish"`` becomes ``" womanish"``. An
occurrence of an equality token is *inside a longer word* when

- the next token continues the word: its text starts with a letter or digit (no leading space, not punctuation,
  not a newline), or
- the token itself continues the previous word: its own text starts with a letter or digit and the previous
  token's text ends with one.

Everything else (a space-prefixed equality token followed by a space, punctuation or the end of the sequence) is a
whole word. The rule reads only the tokens' texts, so it is exact for the sequences given; it cannot see semantic
shifts ("white wine"), which stay out of the count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["WordPieceCount", "tokenizer_word_character_masks", "word_character_masks"]


def _word_character(character: str) -> bool:
    return character.isalnum()


def word_character_masks(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(starts, ends)`` bool ``[V]`` from each token id's text: it starts / ends with a letter or digit."""
    starts = torch.tensor([bool(text) and _word_character(text[0]) for text in texts], dtype=torch.bool)
    ends = torch.tensor([bool(text) and _word_character(text[-1]) for text in texts], dtype=torch.bool)
    return starts, ends


def tokenizer_word_character_masks(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`word_character_masks` of every token id below ``vocab_size`` (ids past the tokenizer: no text)."""
    count = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(count)]) + [""] * (vocab_size - count)
    return word_character_masks(texts)


class WordPieceCount:
    """Occurrences of equality tokens and how many of them are inside a longer word (see the module docstring)."""

    def __init__(self) -> None:
        self.occurrences = 0
        self.inside = 0

    def add(self, tokens: Sequence[int], equality: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
            first: int = 0) -> None:
        """Count the occurrences at positions ``first ..`` of ``tokens`` (earlier tokens serve as left context)."""
        ids = torch.as_tensor(list(tokens), dtype=torch.long)
        if ids.numel() == 0:
            return
        counted = equality[ids]
        counted[:max(first, 0)] = False
        inside = torch.zeros_like(counted)
        inside[:-1] |= starts[ids[1:]]  # the next token continues the word
        inside[1:] |= starts[ids[1:]] & ends[ids[:-1]]  # the token continues the previous token's word
        self.occurrences += int(counted.sum())
        self.inside += int((counted & inside).sum())

    def as_metrics(self) -> dict:
        rate = self.inside / self.occurrences if self.occurrences else None
        return {"equality_tokens": self.occurrences, "inside_words": self.inside, "inside_word_rate": rate}
