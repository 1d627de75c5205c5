"""The positive control (a planted bias) on a tiny random Llama: the intervention does exactly what it says, its
cached decoding equals the teacher-forced model, and EquiLM wrapped around it is exactly fair."""

from __future__ import annotations

import string

import pytest
import torch
from torch.nn import functional as F

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.errors import ConfigError
from equitune.core.groups import WordCycles
from equitune.nlg.backbone import CausalLM
from equitune.nlg.control import PlantedBias, bind_control
from equitune.nlg.decoding import generate
from equitune.nlg.equilm import FairLM
from helpers.nlg_tiny import WordTokenizer, tiny_lm

VOCAB = 40
BOOSTED = [20, 21, 22]  # "negative words"
BONUS = 3.0
CYCLES = {"order2": [[5, 6], [7, 8]], "order3": [[5, 6, 7], [8, 9, 10]]}


def control(triggers, dtype=torch.float64):
    return PlantedBias(CausalLM(tiny_lm(VOCAB, dtype=dtype)), triggers, BOOSTED, BONUS)


def permutation(cycles):
    return WordCycles([[str(i) for i in c] for c in cycles]).bind({str(i): i for i in range(VOCAB)})


def test_the_bonus_goes_to_the_listed_words_exactly_from_the_trigger_on():
    biased = control([6])
    ids = torch.randint(11, 30, (3, 9), generator=torch.Generator().manual_seed(0))
    ids[0, 4] = 6  # trigger in the middle
    ids[1, 0] = 6  # trigger first
    mask = torch.ones_like(ids)
    mask[2, :3] = 0
    ids[2, 1] = 6  # a trigger under the padding does not count
    with torch.no_grad():
        base = biased.backbone(ids, mask)
        out = biased(ids, mask)
    bonus = torch.zeros(VOCAB, dtype=torch.float64)
    bonus[BOOSTED] = BONUS
    expected = base.clone()
    expected[0, 4:] = F.log_softmax(base[0, 4:] + bonus, dim=-1)
    expected[1, :] = F.log_softmax(base[1] + bonus, dim=-1)
    assert torch.allclose(out, expected, atol=1e-12, rtol=0)
    assert torch.equal(out[0, :4], base[0, :4]) and torch.equal(out[2], base[2])
    # The boosted words gained exactly `bonus` in log-odds against every other word, and nothing else moved.
    shift = (out - base)[0, 5]
    others = [t for t in range(VOCAB) if t not in BOOSTED]
    assert torch.allclose(shift[BOOSTED] - shift[others[0]], torch.full((3,), BONUS, dtype=torch.float64), atol=1e-12)
    assert float((shift[others] - shift[others[0]]).abs().max()) < 1e-12


def test_cached_decoding_state_follows_the_context_including_generated_triggers():
    biased = control([6])
    prompt = torch.tensor([[12, 13, 14]])
    mask = torch.ones_like(prompt)
    with torch.no_grad():
        first, state = biased.start(prompt, mask)
        assert not bool(state.triggered[0])
        after_plain, state = biased.step(state, torch.tensor([15]))
        after_trigger, state = biased.step(state, torch.tensor([6]))  # the model itself wrote a trigger word
        later, state = biased.step(state, torch.tensor([16]))
        full = biased(torch.tensor([[12, 13, 14, 15, 6, 16]]))
    for got, position in ((first, 2), (after_plain, 3), (after_trigger, 4), (later, 5)):
        assert torch.allclose(got[0], full[0, position], atol=1e-10, rtol=0)
    assert bool(state.triggered[0])
    selected = biased.select(state, torch.tensor([0, 0]))
    assert selected.triggered.tolist() == [True, True] and bool(state.triggered[0])


@pytest.mark.parametrize("cycles", ["order2", "order3"])
def test_equilm_around_the_control_is_exactly_fair_and_the_control_is_not(cycles):
    perm = permutation(CYCLES[cycles])
    triggers = [c[1] for c in CYCLES[cycles]]  # the words of demographic 1 trigger the bias
    biased = control(triggers)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 25, (6, 8), generator=generator)
    ids[:, 2] = CYCLES[cycles][0][0]  # every context names demographic 0 ...
    ids[::2, 5] = CYCLES[cycles][1][1]  # ... and half also carry a trigger word
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert_not_equivariant(FairLM(biased, "base"), (perm.on_ids, None), (ids, mask), perm.on_scores)
        errors = assert_equivariant(FairLM(biased, "equilm", perm), (perm.on_ids, None), (ids, mask), perm.on_scores)
    assert set(errors) == set(perm.group.element_names)


def test_equilm_samples_of_the_control_are_group_images_and_the_controls_are_not():
    perm = permutation(CYCLES["order2"])
    biased = control([6, 8], dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    prompts = torch.randint(11, 30, (8, 5), generator=generator)
    prompts[:, 1] = 5  # "The man ..."
    uniform = torch.rand(8, 10, generator=generator, dtype=torch.float64)
    common = dict(top_k=8, stop_mask=torch.zeros(VOCAB, dtype=torch.bool), pad_id=0)
    mask = torch.ones_like(prompts)
    moved = perm.on_ids.apply(prompts, 1)  # "The woman ...": triggers the bias
    fair = generate(biased, prompts, mask, "equilm", perm, uniform, **common).tokens
    fair_moved = generate(biased, moved, mask, "equilm", perm, uniform, **common).tokens
    assert torch.equal(fair_moved, perm.on_ids.apply(fair, 1))
    plain = generate(biased, prompts, mask, "base", perm, uniform, **common).tokens
    plain_moved = generate(biased, moved, mask, "base", perm, uniform, **common).tokens
    boosted = torch.tensor(BOOSTED)
    assert int(torch.isin(plain_moved, boosted).sum()) > int(torch.isin(plain, boosted).sum())  # the bias shows


def test_bad_control_settings_are_clear_errors():
    lm = CausalLM(tiny_lm(VOCAB))
    with pytest.raises(ConfigError, match="both triggers and boosted"):
        PlantedBias(lm, [5, 20], BOOSTED, 1.0)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        PlantedBias(lm, [5], [VOCAB + 3], 1.0)
    tokenizer = WordTokenizer([" ", *string.ascii_letters, " cruel", " Cruel", " bad"])
    bound = bind_control(tokenizer, ["cruel", "bad", "sad"])
    assert [b["text"] for b in bound["boosted"]] == [" cruel", " Cruel", " bad"]
    assert bound["skipped_words"] == ["sad"]
    with pytest.raises(ConfigError, match="none of"):
        bind_control(tokenizer, ["sad"])
