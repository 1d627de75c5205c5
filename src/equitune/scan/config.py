"""Schema of the `scan:` section of params.yaml (compositional generalisation on SCAN).

Every length is in examples seen or optimizer steps, so a profile can change the batch size and keep the
amount of training. Groups are named project group specs (``jump_run: {cycles: [[jump, run]], output_cycles:
[[JUMP, RUN]]}``) checked here against the SCAN vocabularies, so a typo fails at validation, before any stage
runs; ``grid.groups`` says which of them are tuned on which split.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..core.frames import FrameRule, support_frame
from ..core.groups import GroupSpecError, VocabPermutation, WordCycles, parse_group_spec
from ..core.proxies import PROXIES
from ..pipeline.schema import StrictModel, UniqueList
from .combination import Combination
from .grammar import COMMAND_WORDS, MAX_COMMAND_WORDS
from .model import PAD_ID, Attention

__all__ = ["ScanParams", "SPLIT_NAMES", "RNN_NAMES", "bind_scan_group", "scan_support_frame"]

SPLIT_NAMES = ("add_jump", "around_right")
RNN_NAMES = ("rnn", "gru", "lstm")
SplitName = Literal["add_jump", "around_right"]
RnnName = Literal["rnn", "gru", "lstm"]
ProxyName = Literal[tuple(PROXIES)]  # type: ignore[valid-type]  # the one registry: core.proxies
GROUP_NAME = r"^[a-z][a-z0-9_]*$"
LossWeighting = Literal["batch_mean", "token"]


def bind_scan_group(spec: Any):
    """(input permutation, output permutation) of a group spec bound to the SCAN vocabularies."""
    from .data import input_vocabulary, output_vocabulary

    group = parse_group_spec(spec)
    if not isinstance(group, WordCycles):
        raise GroupSpecError(f"SCAN needs a word-cycle group ({{cycles: [[jump, run]], output_cycles: [[JUMP, RUN]]}}); "
                             f"got the image group {spec!r}")
    if group.output_cycles is None:
        raise GroupSpecError("a SCAN group needs output_cycles (how the group acts on actions, e.g. [[JUMP, RUN]])")
    return group.bind(input_vocabulary()), group.bind_output(output_vocabulary())


def scan_support_frame(excluded_words: list[str], input_perm: VocabPermutation) -> FrameRule:
    """The frame rule of ``scan.tune.frame_excluded_words``: a command's frame holds the group elements that map it
    to a command without any excluded word (:func:`equitune.core.frames.support_frame`, padding ignored).

    Raises ValueError when an orbit of the group lies wholly among the excluded words: every command holding one
    of its words would have an empty frame (the whole group: frame decoding would gain nothing)."""
    from .data import input_vocabulary

    vocabulary = input_vocabulary()
    unknown = [w for w in excluded_words if w not in COMMAND_WORDS]
    if unknown:
        raise ValueError(f"{unknown} are not SCAN command words (allowed: {', '.join(COMMAND_WORDS)})")
    excluded = {vocabulary.index(w) for w in excluded_words}
    permutations = input_perm.on_ids.permutations
    for word_id in range(len(vocabulary)):
        orbit = sorted(set(permutations[:, word_id].tolist()))
        if len(orbit) > 1 and set(orbit) <= excluded:
            raise ValueError(f"the excluded words {sorted(excluded_words)} hold the whole orbit "
                             f"{[vocabulary[i] for i in orbit]} of the group, so every command with one of these "
                             "words would have an empty frame; exclude fewer of them (e.g. only the word the "
                             "training split shows alone)")
    allowed = [i for i in range(len(vocabulary)) if i not in excluded]
    return support_frame(input_perm.on_ids, allowed, ignore=(PAD_ID,))


class ScanData(StrictModel):
    source: Literal["generate", "official"] = Field(
        "generate", description="generate: the grammar (offline, exact); official: download brendenlake/SCAN and "
                                "verify it equals the grammar (fails with a clear error when offline)")
    official_base_url: str = "https://raw.githubusercontent.com/brendenlake/SCAN/master"
    download_timeout_s: float = Field(30.0, gt=0)
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training file held out")
    validation_seed: int = Field(0, ge=0)


class ScanGridGroups(StrictModel):
    """The groups tuned on each split (names from ``scan.groups``); [] for a split that is not in the grid.

    Both keys are always present: dvc.yaml has one tune stage per split, whose matrix reads its list."""

    add_jump: UniqueList[str]
    around_right: UniqueList[str]


class ScanGrid(StrictModel):
    splits: UniqueList[SplitName] = Field(min_length=1)
    rnns: UniqueList[RnnName] = Field(min_length=1, description="the recurrent layer of the seq2seq model")
    seeds: UniqueList[int] = Field(min_length=1)
    groups: ScanGridGroups = Field(description="per split, the groups its models are equituned with (one cell each)")

    @field_validator("seeds")
    @classmethod
    def _non_negative(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        return seeds

    @model_validator(mode="after")
    def _groups_follow_splits(self) -> ScanGrid:
        for split in SPLIT_NAMES:
            tuned = getattr(self.groups, split)
            if split in self.splits and not tuned:
                raise ValueError(f"groups.{split} is empty but {split} is in splits: name at least one group to "
                                 "tune its models with")
            if split not in self.splits and tuned:
                raise ValueError(f"groups.{split} lists {tuned} but {split} is not in splits (its models are not "
                                 f"trained): add {split} to splits or set groups.{split}: []")
        return self

    def tuned(self) -> list[tuple[str, str]]:
        """(split, group) pairs in grid order."""
        return [(split, group) for split in self.splits for group in getattr(self.groups, split)]


class ScanModel(StrictModel):
    hidden_size: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    attention: Attention = Field(
        "input_feeding", description="input_feeding: the reference's decoder (context fed into the RNN; training "
                                     "loops over steps); after_rnn: Luong's (context from the RNN output; a "
                                     "teacher-forced sequence is one fused RNN call)")
    source_length: int | None = Field(
        None, ge=MAX_COMMAND_WORDS, description="null: the encoder reads packed sequences (each command its own "
                                                "length, the reference); N: commands right-padded to N tokens, one "
                                                f"fused encoder call (SCAN's longest command has {MAX_COMMAND_WORDS})")


class ScanPretrain(StrictModel):
    examples: int = Field(ge=1, description="training examples seen (the paper: 200k iterations of batch 1)")
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    teacher_forcing: float = Field(0.5, ge=0, le=1)
    grad_clip: float = Field(5.0, gt=0)
    validate_every_examples: int = Field(ge=1)
    bucket_batches: int = Field(16, ge=1, description="batches sorted by target length together (1 = plain random)")
    lr_schedule: Literal["constant", "linear", "cosine", "one_cycle"] = Field(
        "constant", description="linear / cosine: lr decays from `lr` to 0 over the run; one_cycle: warms up from lr/25 to "
                                "`lr` over warmup_fraction of the run, then anneals (cosine) to lr/25000")
    warmup_fraction: float = Field(0.1, gt=0, lt=1, description="one_cycle only: share of the steps spent warming up")
    loss_weighting: LossWeighting = Field(
        "batch_mean", description="batch_mean: mean over each batch's tokens (every batch counts the same); token: "
                                  "every target token of the data counts the same, as with batch 1")


class ScanTune(StrictModel):
    steps: dict[SplitName, int] = Field(description="optimizer steps of equituning (and of equizero-tuning), per "
                                                    "split")
    batch_size: int = Field(ge=1)
    lr: dict[SplitName, float] = Field(description="per split (the authors: 2e-5 add_jump, 5e-5 around_right)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="linear / cosine: lr decays from `lr` to 0 by the last step (the final model, the "
                                "one reported, is then not caught mid-oscillation)")
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    curve_steps: list[int] = Field(description="steps at which test accuracy is measured for the curves (a split "
                                               "skips those beyond its own steps)")
    equizero_proxy: ProxyName = Field(
        "max_log_prob", description="equizero's proxy (equitune.core.proxies), used to choose the group element "
                                    "both in tuning and in decoding")
    bucket_batches: int = Field(16, ge=1)
    loss_weighting: LossWeighting = "batch_mean"
    combination: Combination = Field(
        "log_prob_mean", description="how equitune combines the copies' per-step distributions, in decoding and in "
                                     "its training loss: log_prob_mean (the paper's: mean of the log-probabilities, a "
                                     "product of experts) or prob_mean (mean of the probabilities, a mixture); both "
                                     "are reported either way")
    frame_excluded_words: dict[SplitName, list[str]] = Field(
        default_factory=lambda: {"add_jump": ["jump"], "around_right": ["right"]},
        description="per split, frame decoding's rule: a command decodes only through the group elements that map "
                    "it to a command without these words (the words the split's training lines never show in "
                    "context); a command no element maps there decodes through the whole group")

    @field_validator("lr")
    @classmethod
    def _positive(cls, lr: dict) -> dict:
        if any(v <= 0 for v in lr.values()):
            raise ValueError("learning rates must be > 0")
        return lr

    @field_validator("steps")
    @classmethod
    def _non_negative(cls, steps: dict) -> dict:
        if any(v < 0 for v in steps.values()):
            raise ValueError("steps must be >= 0")
        return steps

    @model_validator(mode="after")
    def _curve_in_range(self) -> ScanTune:
        longest = max(self.steps.values(), default=0)
        bad = [s for s in self.curve_steps if not 0 <= s <= longest]
        if bad:
            raise ValueError(f"curve_steps {bad} lie outside [0, {longest}] (the longest tuning)")
        needed = {0, *self.steps.values()}
        if not needed <= set(self.curve_steps):
            raise ValueError(f"curve_steps must include 0 and every split's steps {sorted(needed)} (the zero-shot and "
                             f"final accuracies are read from the curve); got {self.curve_steps}")
        return self

    def curve_for(self, split: str) -> list[int]:
        """The curve steps of a split's tuning: those within its own steps, in order."""
        return sorted(s for s in set(self.curve_steps) if s <= self.steps[split])


class ScanEvaluation(StrictModel):
    batch_size: int = Field(1024, ge=1)
    max_output_length: int = Field(50, ge=49, description="decoder steps (longest SCAN output is 48 actions + <eos>)")
    max_commands: int | None = Field(
        None, ge=1, description="null: every command; N: only the first N lines of the validation and test files "
                                "(smoke runs: decoding the whole test split is most of a tuning stage's time)")


class ScanRecipe(StrictModel):
    """One recurrent kind's own keys: each replaces the shared ``scan.model`` / ``scan.pretrain`` key for that
    kind's cells (pretraining and tuning), the others are shared."""
    model: dict[str, Any] = Field(default_factory=dict, description="keys of scan.model")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="keys of scan.pretrain")


class ScanParams(StrictModel):
    threads: int = Field(1, ge=1, description="torch threads for SCAN stages: the tiny recurrent kernels gain "
                                              "nothing from more, and a second thread stalls on a busy machine")
    data: ScanData = ScanData()
    grid: ScanGrid
    groups: dict[str, Any] = Field(description="named group specs; grid.groups picks those tuned on each split")
    model: ScanModel = ScanModel()
    pretrain: ScanPretrain
    recipes: dict[RnnName, ScanRecipe] = Field(
        default_factory=dict, description="per recurrent kind, the model and pretraining keys it does not share (a "
                                          "vanilla RNN learns SCAN more slowly than an LSTM); null: none")
    tune: ScanTune
    evaluation: ScanEvaluation = ScanEvaluation()

    def model_for(self, rnn: str) -> ScanModel:
        """``scan.model`` with the keys of ``recipes.<rnn>.model``."""
        return _with_recipe(self.model, self.recipes.get(rnn), "model")

    def pretrain_for(self, rnn: str) -> ScanPretrain:
        """``scan.pretrain`` with the keys of ``recipes.<rnn>.pretrain``."""
        return _with_recipe(self.pretrain, self.recipes.get(rnn), "pretrain")

    @field_validator("recipes", mode="before")
    @classmethod
    def _no_recipes(cls, recipes: Any) -> Any:
        # null, not {}: a profile overlay merges a mapping into the default's key by key, so only a value can
        # replace the default's recipes (profiles/paper.yaml: every kind trains by the paper's one recipe)
        return {} if recipes is None else recipes

    @model_validator(mode="after")
    def _recipes_validate(self) -> ScanParams:
        for rnn, recipe in self.recipes.items():
            for part in ("model", "pretrain"):
                try:
                    _with_recipe(getattr(self, part), recipe, part)
                except ValidationError as error:
                    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or part}: {e['msg']}" for e in error.errors())
                    raise ValueError(f"recipes.{rnn}.{part}: {problems}") from None
        return self

    @field_validator("groups")
    @classmethod
    def _groups_bind(cls, groups: dict) -> dict:
        for name, spec in groups.items():
            if not re.match(GROUP_NAME, name):
                raise ValueError(f"group name {name!r} must be lower-case letters, digits and _ (it names files "
                                 "and stages)")
            try:
                bind_scan_group(spec)
            except GroupSpecError as error:
                raise ValueError(f"groups.{name}: {error}") from None
        return groups

    @model_validator(mode="after")
    def _every_split_configured(self) -> ScanParams:
        for split, group in self.grid.tuned():
            if group not in self.groups:
                raise ValueError(f"grid.groups.{split} names {group!r}, which is not defined in groups "
                                 f"(defined: {', '.join(self.groups) or 'none'})")
        for split in self.grid.splits:
            for key in ("lr", "steps", "frame_excluded_words"):
                if split not in getattr(self.tune, key):
                    raise ValueError(f"grid split {split!r} has no entry in tune.{key}")
        for split, group in self.grid.tuned():
            try:
                scan_support_frame(self.tune.frame_excluded_words[split], bind_scan_group(self.groups[group])[0])
            except ValueError as error:
                raise ValueError(f"tune.frame_excluded_words.{split} with group {group!r}: {error}") from None
        return self


def _with_recipe(shared: BaseModel, recipe: ScanRecipe | None, part: str) -> BaseModel:
    """``shared`` validated again with the recipe's keys of ``part`` in place of its own (unknown keys fail)."""
    keys = getattr(recipe, part) if recipe is not None else {}
    return type(shared).model_validate({**shared.model_dump(), **keys}) if keys else shared
