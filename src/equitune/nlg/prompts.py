"""Prompts: Sheng et al.'s templates x the demographic contexts of each axis, tokenised, plus per-sample seeds.

A prompt is ``"<demographic> <template>"`` (``"The woman was known for"``). For every axis the paired prompts
must be exact group images at the token level (``ids("The woman ...") == g . ids("The man ...")``); otherwise
the fairness guarantee would not reach the text actually fed to the model, so that is checked and a mismatch is
an error. Each sample draws its random numbers from a seed derived from (seed, template family, template,
sample index) but NOT from the demographic or the method: paired demographics and the three models share them
(common random numbers), which is what makes EquiLM's samples for the pair exact group images of each other.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from ..core.groups import VocabPermutation
from .config import NlgParams
from .control import bind_control
from .words import WordListError, bind_axis, load_word_lists

__all__ = ["Prompt", "build_prompts", "check_prompts_are_group_images", "row_seed", "row_uniforms", "tokenised_prompts"]


@dataclass(frozen=True)
class Prompt:
    axis: str
    family: str
    template_index: int
    template: str
    demographic_index: int
    demographic: str
    text: str

    def to_json(self) -> dict:
        return asdict(self)


def build_prompts(nlg: NlgParams) -> list[Prompt]:
    """Every (axis, family, template, demographic) prompt, in params order."""
    prompts = []
    for axis, spec in nlg.axes.items():
        for family, templates in nlg.templates.items():
            for t, template in enumerate(templates):
                for d, demographic in enumerate(spec.demographics):
                    text = f"{demographic.strip()} {template.strip()}"
                    prompts.append(Prompt(axis, family, t, template.strip(), d, demographic.strip(), text))
    return prompts


def check_prompts_are_group_images(prompts: list[Prompt], token_ids: list[list[int]], permutation: VocabPermutation,
                                   tokenizer) -> None:
    """Demographic d's prompt must tokenise to ``g^d`` applied to demographic 0's (same axis, family, template)."""
    first = {(p.family, p.template_index): ids for p, ids in zip(prompts, token_ids, strict=False) if p.demographic_index == 0}
    for prompt, ids in zip(prompts, token_ids, strict=False):
        reference = first[(prompt.family, prompt.template_index)]
        element = prompt.demographic_index % permutation.group.order
        expected = permutation.permutations[element][torch.tensor(reference)].tolist()
        if ids != expected:
            raise WordListError(
                f"axis {prompt.axis!r}: prompt {prompt.text!r} tokenises to "
                f"{tokenizer.convert_ids_to_tokens(ids)}, but the group maps the first demographic's prompt to "
                f"{tokenizer.convert_ids_to_tokens(expected)}; the demographic words must be equality words, in the "
                "same position of their set as the demographic's position in params (nlg.axes.<axis>.demographics)")


def row_seed(seed: int, family: str, template_index: int, sample: int) -> int:
    """A 63-bit seed for one sample, independent of the demographic and the method (common random numbers)."""
    digest = hashlib.sha256(f"{seed}|{family}|{template_index}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """``[len(seeds), steps]`` uniform numbers in float64, one generator per row."""
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        rows.append(torch.rand(steps, generator=generator, dtype=torch.float64))
    return torch.stack(rows)


def tokenised_prompts(nlg: NlgParams, tokenizer, progress=print) -> dict:
    """Per axis the word lists bound to the tokenizer (every unusable word form listed) and every prompt with its
    token ids, checked to be exact group images of each other; with the control enabled, its negative words'
    token ids: the prompts stage's file."""
    word_lists = load_word_lists(nlg.word_lists)
    prompts = build_prompts(nlg)
    axes = {}
    for axis, spec in nlg.axes.items():
        words = bind_axis(word_lists, spec.words, tokenizer)
        if words.order != len(spec.demographics):
            raise WordListError(f"axis {axis!r}: {len(spec.demographics)} demographics in params but the equality "
                                f"sets of word list {spec.words!r} have {words.order} words")
        axis_prompts = [p for p in prompts if p.axis == axis]
        token_ids = [tokenizer(p.text).input_ids for p in axis_prompts]
        # The permutation only needs to cover the tokenizer's ids here; the model's vocabulary is checked later.
        vocab_size = max(len(tokenizer), 1 + max(i for ids in token_ids for i in ids))
        check_prompts_are_group_images(axis_prompts, token_ids, words.permutation(vocab_size), tokenizer)
        axes[axis] = {
            "words": words.to_json(),
            "prompts": [{**p.to_json(), "token_ids": ids} for p, ids in zip(axis_prompts, token_ids, strict=True)],
        }
        for line in words.skipped_forms:
            progress(f"[{axis}] word form not used: {line}")
    result = {"model": nlg.model, "pad_id": tokenizer.pad_token_id, "axes": axes}
    if nlg.control.enabled:
        result["control"] = bind_control(tokenizer, nlg.control.negative_words)
        for word in result["control"]["skipped_words"]:
            progress(f"[control] negative word not used (no single-token form): {word}")
    return result
