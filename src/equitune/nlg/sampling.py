"""Sampling every (prompt, seed, sample) of one axis with each method, in batches, and checking group images.

One row = (prompt, seed, sample index). Rows are decoded ``batch_size`` at a time (left padded); the random
numbers of a row come from :func:`equitune.nlg.prompts.row_seed`, so a row's sample does not depend on the batch
it lands in, and the paired demographics and the three methods share them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .config import NlgParams
from .equilm import generate, lm_vocab_size, stop_token_mask
from .prompts import row_seed, row_uniforms
from .words import AxisWords

__all__ = ["continuation_text", "generate_all", "group_image_fraction", "left_pad", "sample_axis"]


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


def generate_all(lm, tokenizer, prompts: dict[str, Any], nlg: NlgParams, device: torch.device | str,
                 log: Callable[[dict[str, float]], None], progress: Callable[[int], None] | None = None
                 ) -> tuple[list[dict[str, Any]], dict]:
    """Every sample of every axis and method (one model load), and the generation metrics: per method and axis the
    fraction of paired samples that are exact group images, and the mean sample length. Speed goes to ``log``
    only (it is not deterministic)."""
    vocab_size = lm_vocab_size(lm)
    stop_mask = stop_token_mask(tokenizer, vocab_size)
    metrics: dict = {}
    records: list[dict[str, Any]] = []
    for axis, axis_data in prompts["axes"].items():
        words = AxisWords.from_json(axis, axis_data["words"])
        for method in nlg.methods:
            start = time.perf_counter()
            axis_records = sample_axis(
                lm, tokenizer, axis_data, words, [method], seeds=nlg.seeds,
                samples_per_prompt=nlg.samples_per_prompt, top_k=nlg.top_k, max_new_tokens=nlg.max_new_tokens,
                batch_size=nlg.batch_size, stop_mask=stop_mask, pad_id=prompts["pad_id"], vocab_size=vocab_size,
                device=device, progress=progress)
            seconds = time.perf_counter() - start
            tokens = sum(len(r["tokens"]) for r in axis_records)
            log({f"{method}/{axis}/tokens_per_second": tokens / seconds, f"{method}/{axis}/seconds": seconds})
            metrics.setdefault(method, {})[axis] = {
                "group_image_fraction": group_image_fraction(axis_records, words, vocab_size),
                "mean_new_tokens": statistics.fmean(len(r["tokens"]) for r in axis_records),
            }
            records += axis_records
    return records, metrics
