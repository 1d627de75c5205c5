"""Sampling every (prompt, seed, sample) of one axis with each method, in batches, and checking group images.

One row = (prompt, seed, sample index). Rows are decoded ``batch_size`` at a time (left padded); the random
numbers of a row come from :func:`equitune.nlg.prompts.row_seed`, so a row's sample does not depend on the batch
it lands in, and the paired demographics and the three methods share them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .equilm import generate
from .prompts import row_seed, row_uniforms
from .words import AxisWords

__all__ = ["continuation_text", "group_image_fraction", "left_pad", "sample_axis"]


def continuation_text(tokenizer, tokens: list[int]) -> str:
    """The generated text up to the first newline (the stop token's text after it is not part of the sample)."""
    return tokenizer.decode(tokens, skip_special_tokens=True).split("\n", 1)[0]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


@torch.no_grad()
def sample_axis(lm, tokenizer, axis_data: dict[str, Any], words: AxisWords, methods: list[str], *, seeds: list[int],
                samples_per_prompt: int, top_k: int, max_new_tokens: int, batch_size: int, stop_mask: torch.Tensor,
                pad_id: int, vocab_size: int, device: torch.device | str = "cpu",
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Every sample of one axis for every method, as records (prompt fields + method, seed, tokens, text)."""
    permutation = words.permutation(vocab_size)
    general = words.general_mask(vocab_size)
    rows = [(prompt, seed, sample) for prompt in axis_data["prompts"] for seed in seeds
            for sample in range(samples_per_prompt)]
    records = []
    for method in methods:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids, mask = left_pad([p["token_ids"] for p, _, _ in chunk], pad_id)
            uniform = row_uniforms([row_seed(s, p["family"], p["template_index"], k) for p, s, k in chunk],
                                   max_new_tokens)
            out = generate(lm, ids.to(device), mask.to(device), method, permutation, uniform, top_k=top_k,
                           stop_mask=stop_mask, pad_id=pad_id, general_mask=general)
            for row, (prompt, seed, sample) in enumerate(chunk):
                tokens = out.tokens[row, :int(out.lengths[row])].tolist()
                record = {k: v for k, v in prompt.items() if k != "token_ids"}
                records.append({**record, "method": method, "seed": seed, "sample": sample, "tokens": tokens,
                                "continuation": continuation_text(tokenizer, tokens)})
            if progress is not None:
                progress(len(chunk))
    return records


def group_image_fraction(records: list[dict[str, Any]], words: AxisWords, vocab_size: int) -> float:
    """Fraction of (family, template, seed, sample) groups whose demographic-d sample is exactly g^d applied to
    demographic 0's sample (token for token). 1.0 is what EquiLM guarantees with shared random numbers."""
    permutation = words.permutation(vocab_size).permutations
    by_key: dict[tuple, dict[int, list[int]]] = {}
    for r in records:
        by_key.setdefault((r["family"], r["template_index"], r["seed"], r["sample"]), {})[r["demographic_index"]] = r["tokens"]
    matches = 0
    for samples in by_key.values():
        reference = samples[0]
        matches += all(
            permutation[d % permutation.shape[0]][torch.tensor(reference, dtype=torch.long)].tolist() == tokens
            for d, tokens in samples.items())
    return matches / len(by_key)
