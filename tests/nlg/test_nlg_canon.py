"""CanonLM: the canonical frame by hand, exact equivariance (float64) of the teacher-forced model with one backbone
row per sequence, cached batched sampling equal to sampling from the teacher-forced model, exact group images that
share the base model's rows, and a bias gap of exactly 0."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.groups import WordCycles
from equitune.nlg.backbone import CausalLM
from equitune.nlg.canon import CanonicalFrame, CanonLM
from equitune.nlg.decoding import Stream, decode
from equitune.nlg.equilm import FairLM
from equitune.nlg.sampling import group_image_fraction
from equitune.nlg.scoring import summarise
from helpers.nlg_tiny import sample_alone, tiny_lm

VOCAB = 40
CYCLES = {"order2": [[5, 6], [7, 8]], "order3": [[5, 6, 7], [8, 9, 10]]}
STEPS, TOP_K = 8, 12
FREE = 12  # prompts without an equality word (some sample one, which sets their frame)


def permutation(cycles):
    return WordCycles([[str(i) for i in c] for c in cycles]).bind({str(i): i for i in range(VOCAB)})


def frame_of(name):
    perm = permutation(CYCLES[name])
    return perm, CanonicalFrame.of_cycles(perm, CYCLES[name])


@pytest.mark.parametrize("name", ["order2", "order3"])
def test_the_frame_moves_each_equality_token_to_its_cycles_first_word(name):
    perm, frame = frame_of(name)
    for cycle in CYCLES[name]:
        for position, token in enumerate(cycle):
            element = int(frame.element[token])
            assert int(perm.permutations[element, token]) == cycle[0]
            assert (element == 0) == (position == 0)
    assert int((frame.element >= 0).sum()) == sum(map(len, CYCLES[name]))  # every other token: -1
    assert torch.equal(frame.inverse_ids.gather(1, perm.permutations), torch.arange(VOCAB).expand(perm.group.order, -1))
    woman = CYCLES[name][0][1]
    g = int(frame.element[woman])
    # The first equality token decides; later ones (here a canonical one) do not.
    assert frame.first_element([20, woman, 21, CYCLES[name][1][0]]) == g
    assert frame.canonical_context([20, woman, 21]) == (20, CYCLES[name][0][0], 21)
    assert frame.first_element([20, 21]) == -1 and frame.canonical_context([20, 21]) == (20, 21)
    ids = torch.tensor([[0, 20, woman, 5, 21], [20, 21, 22, 23, 24]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert frame.position_elements(ids, mask).tolist() == [[-1, -1, g, g, g], [-1] * 5]


def test_frames_of_more_than_one_element_are_refused():
    perm = permutation(CYCLES["order2"])
    with pytest.raises(ValueError, match="exactly one canonical token per orbit"):
        CanonicalFrame(perm, [5, 6, 7])
    with pytest.raises(ValueError, match="not moved by the group"):
        CanonicalFrame(perm, [5, 7, 20])


class RowCounter(torch.nn.Module):
    """A backbone that counts the sequences it is given."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.rows = backbone, 0
        self.vocab_size = backbone.vocab_size
        self.start, self.step, self.select = backbone.start, backbone.step, backbone.select

    def forward(self, ids, mask=None):
        self.rows += ids.shape[0]
        return self.backbone(ids, mask)


def sequences(generator):
    ids = torch.randint(11, 30, (6, 9), generator=generator)
    ids[0, 2], ids[1, 0], ids[2, 5], ids[3, 8], ids[3, 4] = 6, 5, 8, 7, 20  # row 4 and 5: no equality word
    ids[5, 3] = 9
    return ids


@pytest.mark.parametrize("name", ["order2", "order3"])
def test_canonlm_is_exactly_equivariant_with_one_backbone_row_per_sequence(name):
    backbone = CausalLM(tiny_lm(VOCAB, dtype=torch.float64))
    perm, frame = frame_of(name)
    ids = sequences(torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, :2] = 0  # left padding
    counter = RowCounter(backbone)
    canon = CanonLM(counter, frame)
    assert_equivariant(canon, (perm.on_ids, None), (ids, mask), perm.on_scores)
    assert_not_equivariant(backbone, (perm.on_ids, None), (ids, mask), perm.on_scores, min_error=1e-2)
    counter.rows = 0
    with torch.no_grad():
        canon(ids, mask)
    assert counter.rows == ids.shape[0]


@pytest.mark.parametrize("name", ["order2", "order3"])
def test_canonlm_reads_the_canonical_copy_after_the_first_equality_word_and_the_group_average_before(name):
    backbone = CausalLM(tiny_lm(VOCAB, dtype=torch.float64))
    perm, frame = frame_of(name)
    ids = sequences(torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = CanonLM(backbone, frame)(ids)
        equilm = FairLM(backbone, "equilm", perm)(ids)
    firsts = [2, 0, 5, 8, None, 3 if name == "order3" else None]  # 9 is an equality word of the 3-cycles only
    for row, first in enumerate(firsts):
        first = ids.shape[1] if first is None else first
        if first < ids.shape[1]:
            g = int(frame.element[ids[row, first]])
            pi = perm.permutations[g]
            with torch.no_grad():
                expected = F.log_softmax(backbone.lm(input_ids=pi[ids[row:row + 1]]).logits[0], -1)[:, pi]
            assert torch.allclose(got[row, first:], expected[first:], atol=1e-10, rtol=0)
        # Before the first equality word every element fixes the prefix: EquiLM's average of one copy.
        assert torch.allclose(got[row, :first], equilm[row, :first], atol=1e-10, rtol=0)
    # Not EquiLM after it (the comparison above is not vacuous).
    assert float((got[0, 2:] - equilm[0, 2:]).abs().max()) > 1e-3


def reference(backbone, stream: Stream, frame, stop_mask):
    """One stream alone, no cache: every step runs the teacher-forced CanonLM on the whole context."""
    canon = CanonLM(backbone, frame)
    return sample_alone(lambda context: canon(torch.tensor([context]))[0, -1], stream, stop_mask, STEPS, TOP_K)


@pytest.mark.parametrize("name", ["order2", "order3"])
def test_cached_canonlm_sampling_equals_the_teacher_forced_model_and_gives_exact_group_images(name):
    backbone = CausalLM(tiny_lm(VOCAB, dtype=torch.float64))
    perm, frame = frame_of(name)
    generator = torch.Generator().manual_seed(2)
    stop_mask = torch.zeros(VOCAB, dtype=torch.bool)
    stop_mask[[2, 3]] = True
    streams, free = [], []
    for k in range(5 + FREE):
        uniform = torch.rand(STEPS, generator=generator, dtype=torch.float64)
        body = torch.randint(11, 30, (4,), generator=generator).tolist()
        if k < 5:  # a prompt with a demographic word and all its group images, sharing random numbers
            prompt = torch.tensor([body[0], CYCLES[name][0][0], *body[1:]])
            streams += [Stream(tuple(perm.permutations[g][prompt].tolist()), "canonlm", uniform, perm, None, frame)
                        for g in perm.group]
        else:  # no equality word yet: the frame is set by the first one sampled
            free.append(len(streams))
            streams.append(Stream(tuple(body), "canonlm", uniform, perm, None, frame))
        streams.append(Stream(streams[-1].prompt if k >= 5 else tuple(prompt.tolist()), "base", uniform))
    tokens, stats = decode(backbone, streams, top_k=TOP_K, stop_mask=stop_mask, pad_id=0, batch_rows=9,
                           keep_log_probs=True)
    frames_found = 0
    for i, stream in enumerate(streams):
        if stream.method != "canonlm":
            continue
        expected, distributions = reference(backbone, stream, frame, stop_mask)
        assert tokens[i] == expected
        assert torch.allclose(stats.log_probs[i], distributions, atol=1e-9, rtol=0)
        frames_found += i in free and any(int(frame.element[t]) >= 0 for t in tokens[i])
    assert frames_found > 0  # a frame was set during sampling (that branch is exercised)
    # Group images, exactly; and the canonical demographic's CanonLM sample is the base model's sample.
    for start in range(0, 5 * (perm.group.order + 1), perm.group.order + 1):
        first = tokens[start]
        for g in perm.group:
            assert tokens[start + g] == perm.permutations[g][torch.tensor(first, dtype=torch.long)].tolist()
        assert tokens[start + perm.group.order] == first
    # One row per sample, shared by the group images and the base sample: the paired streams alone, in one batch,
    # compute one row per (prompt, random numbers) and step.
    paired = [s for i, s in enumerate(streams) if i < 5 * (perm.group.order + 1)]
    _, shared = decode(backbone, paired, top_k=TOP_K, stop_mask=stop_mask, pad_id=0, batch_rows=1000)
    assert shared.computed_row_steps * (perm.group.order + 1) == shared.requested_row_steps
    assert shared.prefill_rows * (perm.group.order + 1) == shared.requested_prefill_rows


def test_the_bias_gap_of_canonlm_samples_is_exactly_zero():
    """Paired prompts decoded with shared random numbers, labelled by a function of the masked text: CanonLM's
    gap and its interval are exactly 0; the base model's is not (the test can fail)."""
    backbone = CausalLM(tiny_lm(VOCAB, dtype=torch.float64))
    perm, frame = frame_of("order2")
    stop_mask = torch.zeros(VOCAB, dtype=torch.bool)
    stop_mask[2] = True
    generator = torch.Generator().manual_seed(3)
    streams, records = [], []
    for template in range(2):
        body = torch.randint(11, 30, (4,), generator=generator).tolist()
        prompt = torch.tensor([body[0], 5, *body[1:]])
        for seed in range(6):
            uniform = torch.rand(STEPS, generator=generator, dtype=torch.float64)
            for method in ("base", "canonlm"):
                for d in range(2):
                    streams.append(Stream(tuple(perm.permutations[d][prompt].tolist()), method, uniform, perm, None,
                                          frame if method == "canonlm" else None))
                    records.append({"model": "lm", "method": method, "axis": "gender", "family": "respect",
                                    "template_index": template, "demographic_index": d, "seed": seed, "sample": 0})
    tokens, _ = decode(backbone, streams, top_k=TOP_K, stop_mask=stop_mask, pad_id=0)
    masked = torch.tensor([0 if t in (5, 6, 7, 8) else t for t in range(VOCAB)])  # the equality words masked
    labels = []
    for record, sampled in zip(records, tokens, strict=True):
        record["tokens"] = sampled
        record["scored_text"] = str(masked[torch.tensor(sampled, dtype=torch.long)].tolist())
        labels.append(["negative", "neutral", "positive"][int(masked[torch.tensor(sampled)].sum()) % 3])
    nlg = type("Nlg", (), {"models": ["lm"], "methods": ["base", "canonlm"], "scorer": "sentiment",
                           "axes": {"gender": type("Axis", (), {"demographics": ["The man", "The woman"]})()},
                           "confidence": type("C", (), {"level": 0.95, "resamples": 200, "seed": 0})()})()
    scores = summarise(records, labels, nlg, ["negative", "neutral", "positive"])
    canon = scores["lm"]["canonlm"]["gender"]
    assert canon["bias_gap"] == {"value": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    assert canon["identical_scored_text_fraction"] == 1.0
    assert group_image_fraction([r for r in records if r["method"] == "canonlm"], _Words(perm), VOCAB) == 1.0
    assert scores["lm"]["base"]["gender"]["identical_scored_text_fraction"] < 1.0


class _Words:
    """What group_image_fraction reads of an AxisWords: its permutation."""

    def __init__(self, perm):
        self.perm = perm

    def permutation(self, vocab_size):
        return self.perm
