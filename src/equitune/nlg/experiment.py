"""What the NLG stages do, as the functions the stage scripts call: tokenise the prompts, load the model, generate
the samples, score them, measure perplexity and the fairness identity.

Every path comes from the caller (dvc.yaml passes them to the stage scripts), and so does the seeding: a stage seeds
(:meth:`~equitune.pipeline.context.StageContext.seed`) right before :func:`load_model` /
:func:`load_perplexity_inputs`, the place it has always had, so that the seeded streams (hence the results) stay the
same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from tqdm import tqdm

from ..pipeline.distributed import DistributedContext
from .backbone import lm_vocab_size
from .config import NlgParams
from .lm import load_lm, load_tokenizer
from .perplexity import ScoredText, evaluate_perplexity, select_windows
from .prompts import tokenised_prompts
from .sampling import generate_all
from .scoring import LABELS, score_records, summarise
from .wordpieces import tokenizer_word_character_masks
from .words import AxisWords

__all__ = ["LanguageModel", "PerplexityInputs", "ScoredSamples", "generate_samples", "load_model",
           "load_perplexity_inputs", "make_prompts", "measure_perplexity", "score_samples"]

Log = Callable[[dict[str, float]], None]
"""``log(metrics)``: where values that are not results go (the stage passes its MLflow run's ``log_metrics``)."""


def make_prompts(nlg: NlgParams) -> dict:
    """The tokenised prompts of every axis (word lists checked against the model's tokenizer: bad ones raise)."""
    return tokenised_prompts(nlg, load_tokenizer(nlg.model))


@dataclass(frozen=True)
class LanguageModel:
    """The tokenizer and the causal LM of ``nlg.model``, loaded once for all of a stage's work."""

    tokenizer: Any
    lm: Any


def load_model(nlg: NlgParams, device: torch.device | str) -> LanguageModel:
    """The tokenizer, then the LM on ``device`` (after the stage's seeding)."""
    tokenizer = load_tokenizer(nlg.model)
    return LanguageModel(tokenizer, load_lm(nlg.model, device))


def _samples_per_rank(nlg: NlgParams, prompts: dict, world_size: int) -> int:
    draws = sum(len(a["prompts"]) for a in prompts["axes"].values()) * len(nlg.seeds) * nlg.samples_per_prompt
    return draws * len(nlg.methods) * len(nlg.models) // world_size


def generate_samples(nlg: NlgParams, model: LanguageModel, prompts: dict, device: torch.device | str, log: Log,
                     context: DistributedContext | None = None, show_progress: bool = True
                     ) -> tuple[list[dict[str, Any]], dict]:
    """Every sample of every backbone, method and axis, and the generation metrics
    (:func:`~equitune.nlg.sampling.generate_all`); speed goes to ``log`` only. A progress bar on a terminal when
    ``show_progress``; under torchrun it counts this rank's share of the samples."""
    world_size = 1 if context is None else context.world_size
    with tqdm(total=_samples_per_rank(nlg, prompts, world_size), desc="samples",
              disable=not (sys.stderr.isatty() and show_progress)) as bar:
        return generate_all(model.lm, model.tokenizer, prompts, nlg, device, log, bar.update, context)


@dataclass(frozen=True)
class ScoredSamples:
    labelled: list[dict[str, Any]]  # each sample's record with its label under the scorer's name
    metrics: dict  # label fractions and bias gaps with their confidence intervals


def score_samples(nlg: NlgParams, prompts: dict, records: list[dict[str, Any]], device: torch.device | str
                  ) -> ScoredSamples:
    """Label every sample with ``nlg.scorer`` (the axis's equality words masked) and summarise the labels."""
    equality = {axis: [w for s in data["words"]["equality_sets"] for w in s]
                for axis, data in prompts["axes"].items()}
    labels = score_records(records, equality, nlg, device)
    metrics = summarise(records, labels, nlg, LABELS[nlg.scorer])
    labelled = [{**r, nlg.scorer: label} for r, label in zip(records, labels, strict=True)]
    return ScoredSamples(labelled, metrics)


@dataclass(frozen=True)
class PerplexityInputs:
    """The tokenizer, the scored windows of the held-out text and the LM of ``nlg.model``."""

    tokenizer: Any
    scored: ScoredText
    lm: Any


def load_perplexity_inputs(nlg: NlgParams, prompts: dict, documents: list[tuple[str, str]],
                           device: torch.device | str) -> PerplexityInputs:
    """The tokenizer, the windows of ``documents`` to score (per axis, those holding its equality words) and then
    the LM (after the stage's seeding): windows that cannot be chosen fail before the slow model load."""
    tokenizer = load_tokenizer(nlg.model)
    equality = {axis: {t for c in AxisWords.from_json(axis, data["words"]).equality_cycles for t in c}
                for axis, data in prompts["axes"].items()}
    scored = select_windows(tokenizer, documents, nlg.perplexity, equality)
    return PerplexityInputs(tokenizer, scored, load_lm(nlg.model, device))


def measure_perplexity(nlg: NlgParams, inputs: PerplexityInputs, description: dict, prompts: dict,
                       device: torch.device | str) -> dict:
    """The perplexity table, the fairness equivariance errors and the equality tokens inside longer words
    (:func:`~equitune.nlg.perplexity.evaluate_perplexity`); progress lines go to stdout."""
    word_chars = tokenizer_word_character_masks(inputs.tokenizer, lm_vocab_size(inputs.lm))
    return evaluate_perplexity(inputs.lm, inputs.scored, description, prompts, nlg, device,
                               partial(print, flush=True), word_chars)
