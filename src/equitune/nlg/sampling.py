"""Sampling every (prompt, seed, sample) of every axis with every method and backbone, and checking group images.

One sample = (backbone, method, prompt, seed, sample index). Its random numbers come from
:func:`equitune.nlg.prompts.row_seed`, which depends on neither the demographic, the method nor the backbone, so
the paired demographics, the three methods and the two backbones share them (common random numbers), and a
sample does not depend on the batch it lands in. All samples of a backbone go through one
:func:`equitune.nlg.decoding.decode`: one model load, one prefill of the distinct prompts, large batches mixing
methods and axes, and rows that coincide (EquiLM's pairs, R-EquiLM = EquiLM on axes without general words)
computed once. The samples of one (template, seed, sample) are decoded next to each other so they can share.

Backbones: ``lm``, the pretrained model; ``control`` (when enabled), the same model with a planted bias on each
axis (:mod:`equitune.nlg.control`), wrapped by the same methods.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from ..pipeline.distributed import DistributedContext
from .backbone import CausalLM
from .canon import CanonicalFrame
from .config import NlgParams
from .control import axis_control
from .decoding import DecodeStats, Stream, decode
from .equilm import stop_token_mask
from .prompts import row_seed, row_uniforms
from .wordpieces import WordPieceCount, tokenizer_word_character_masks
from .words import AxisWords

__all__ = ["continuation_text", "decode_shared", "generate_all", "group_image_fraction", "left_pad", "plan_streams"]


def continuation_text(tokenizer, tokens: list[int]) -> str:
    """The generated text up to the first newline (the stop token's text after it is not part of the sample)."""
    return tokenizer.decode(tokens, skip_special_tokens=True).split("\n", 1)[0]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


def plan_streams(axis: str, axis_data: dict[str, Any], words: AxisWords, nlg: NlgParams, vocab_size: int,
                 model: str) -> tuple[list[Stream], list[dict[str, Any]]]:
    """The streams of one axis for every method, ordered so that the streams of one (template, seed, sample) are
    adjacent, and the record (without tokens) each one will become."""
    permutation = words.permutation(vocab_size)
    general = words.general_mask(vocab_size)
    frame = CanonicalFrame.of_cycles(permutation, words.equality_cycles) if "canonlm" in nlg.methods else None
    draws = []
    for prompt in axis_data["prompts"]:
        for seed in nlg.seeds:
            for sample in range(nlg.samples_per_prompt):
                key = (prompt["family"], prompt["template_index"], seed, sample)
                draws.append((key, prompt, seed, sample))
    draws.sort(key=lambda d: (d[0], d[1]["demographic_index"]))
    uniforms = row_uniforms([row_seed(seed, p["family"], p["template_index"], k) for _, p, seed, k in draws],
                            nlg.max_new_tokens)
    streams, records = [], []
    for (_, prompt, seed, sample), uniform in zip(draws, uniforms, strict=True):
        for method in nlg.methods:
            streams.append(Stream(tuple(prompt["token_ids"]), method, uniform, permutation, general,
                                  frame if method == "canonlm" else None))
            fields = {k: v for k, v in prompt.items() if k != "token_ids"}
            records.append({**fields, "axis": axis, "model": model, "method": method, "seed": seed, "sample": sample})
    return streams, records


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


def decode_shared(context: DistributedContext | None, backbone, streams: list[Stream], **options: Any
                  ) -> tuple[list[list[int]], DecodeStats]:
    """:func:`decode` of ``streams``; under torchrun each rank decodes a contiguous share and every rank gets all
    tokens back in the original order, with the ranks' stats added up. A sample's random numbers travel with its
    stream, so a sample does not depend on the rank it lands on; only the sharing of rows between streams split
    across ranks is lost (the stats count it)."""
    if context is None or not context.is_distributed:
        return decode(backbone, streams, **options)
    tokens, stats = decode(backbone, context.shard(streams), **options)
    every = context.gather([stats])
    total = DecodeStats(**{f.name: sum(getattr(s, f.name) for s in every) for f in fields(DecodeStats)
                           if f.name != "log_probs"})
    return context.gather(tokens), total


def generate_all(lm, tokenizer, prompts: dict[str, Any], nlg: NlgParams, device: torch.device | str,
                 log: Callable[[dict[str, float]], None], progress: Callable[[int], None] | None = None,
                 context: DistributedContext | None = None) -> tuple[list[dict[str, Any]], dict]:
    """Every sample of every backbone, axis and method (one model load), and the generation metrics: per backbone,
    method and axis the fraction of paired samples that are exact group images and the mean sample length, and per
    backbone what the decoder computed. Speed goes to ``log`` only (it is not deterministic). Under torchrun
    (``context``) the samples are split across the ranks and gathered (:func:`decode_shared`): every rank returns
    all records."""
    base = CausalLM(lm)
    vocab_size = base.vocab_size
    stop_mask = stop_token_mask(tokenizer, vocab_size)
    words = {axis: AxisWords.from_json(axis, data["words"]) for axis, data in prompts["axes"].items()}
    equality_masks = {axis: axis_words.equality_mask(vocab_size) for axis, axis_words in words.items()}
    # One decode per backbone: the LM carries every axis at once; each axis has its own control.
    jobs = [("lm", base, list(words))]
    if nlg.control.enabled:
        jobs += [("control", axis_control(base, words[axis], prompts["control"], nlg.control), [axis])
                 for axis in words]
    records: list[dict[str, Any]] = []
    metrics: dict = {"decoding": {}}
    word_chars = tokenizer_word_character_masks(tokenizer, vocab_size)
    pieces: dict[tuple[str, str, str], WordPieceCount] = {}
    for model, backbone, axes in jobs:
        streams, planned = [], []
        for axis in axes:
            axis_streams, axis_records = plan_streams(axis, prompts["axes"][axis], words[axis], nlg, vocab_size, model)
            streams += axis_streams
            planned += axis_records
        start = time.perf_counter()
        tokens, stats = decode_shared(context, backbone, streams, top_k=nlg.top_k, stop_mask=stop_mask,
                                      pad_id=prompts["pad_id"], batch_rows=nlg.batch_size, device=device,
                                      progress=progress, average=nlg.group_average)
        seconds = time.perf_counter() - start
        name = model if model == "lm" else f"control/{axes[0]}"
        log({f"{name}/tokens_per_second": stats.generated_tokens / seconds, f"{name}/seconds": seconds,
             f"{name}/model_rows_per_second": (stats.computed_row_steps + stats.prefill_tokens) / seconds})
        totals = metrics["decoding"].setdefault(model, {"requested_row_steps": 0, "computed_row_steps": 0,
                                                        "requested_prefill_rows": 0, "prefill_rows": 0,
                                                        "generated_tokens": 0})
        for key in totals:
            totals[key] += getattr(stats, key)
        for record, stream, sampled in zip(planned, streams, tokens, strict=True):
            records.append({**record, "tokens": sampled, "continuation": continuation_text(tokenizer, sampled)})
            # The generated tokens only; the prompt's last token is their left context.
            pieces.setdefault((model, record["method"], record["axis"]), WordPieceCount()).add(
                [*stream.prompt, *sampled], equality_masks[record["axis"]], *word_chars, first=len(stream.prompt))
    for entry in metrics["decoding"].values():
        entry["shared_fraction"] = 1.0 - entry["computed_row_steps"] / max(1, entry["requested_row_steps"])
    for model in nlg.models:
        for method in nlg.methods:
            for axis in words:
                chosen = [r for r in records if (r["model"], r["method"], r["axis"]) == (model, method, axis)]
                metrics.setdefault(model, {}).setdefault(method, {})[axis] = {
                    "group_image_fraction": group_image_fraction(chosen, words[axis], vocab_size),
                    "mean_new_tokens": statistics.fmean(len(r["tokens"]) for r in chosen),
                    "word_pieces": pieces.get((model, method, axis), WordPieceCount()).as_metrics(),
                }
    return records, metrics
