"""The shared decoder: many streams (methods, two groups, paired prompts, two backbones) in small batches give the
same samples and distributions as decoding each stream alone without a cache, while sharing identical rows."""

from __future__ import annotations

import pytest
import torch

from equitune.core.groups import WordCycles
from equitune.nlg.backbone import CausalLM
from equitune.nlg.control import PlantedBias
from equitune.nlg.decoding import Stream, decode
from equitune.nlg.equilm import combine_group_log_probs
from helpers.nlg_tiny import sample_alone, tiny_lm

VOCAB = 40
STEPS = 7
TOP_K = 6


def permutation(cycles):
    return WordCycles([[str(i) for i in c] for c in cycles]).bind({str(i): i for i in range(VOCAB)})


def reference(backbone, stream: Stream, stop_mask: torch.Tensor):
    """One stream alone, no cache, no padding: every step reruns each transformed context through ``forward``."""
    perm = stream.permutation

    def combined(context: list[int]) -> torch.Tensor:
        rows = []
        for g in range(stream.order):
            pi = perm.permutations[g] if stream.method != "base" else torch.arange(VOCAB)
            rows.append(backbone(pi[torch.tensor([context])])[0, -1][pi])
        return combine_group_log_probs(torch.stack(rows), stream.method, stream.general_mask)

    return sample_alone(combined, stream, stop_mask, STEPS, TOP_K)


def streams_for_two_axes():
    """Paired prompts (x and g.x share their random numbers) on two "axes", every method, two samples each."""
    generator = torch.Generator().manual_seed(7)
    axes = {"a": (permutation([[5, 6], [7, 8]]), [11, 12]), "b": (permutation([[9, 10]]), [])}
    streams = []
    for name, (perm, general) in axes.items():
        general_mask = torch.zeros(VOCAB, dtype=torch.bool)
        general_mask[general] = True
        words = [[5, 6], [7, 8]] if name == "a" else [[9, 10]]
        for _template in range(2):
            body = torch.randint(13, 30, (4,), generator=generator).tolist()
            prompt = [body[0], words[0][0], *body[1:]]  # demographic 0 ...
            pair = [prompt, perm.permutations[1][torch.tensor(prompt)].tolist()]  # ... and its group image
            for _sample in range(2):
                uniform = torch.rand(STEPS, generator=generator, dtype=torch.float64)
                for method in ("base", "equilm", "r_equilm"):
                    for p in pair:
                        streams.append(Stream(tuple(p), method, uniform, perm, general_mask))
    return streams


@pytest.mark.parametrize("planted, batch_rows", [(False, 7), (True, 1000)], ids=["lm-small-batches", "control"])
def test_shared_decoding_equals_each_stream_alone(planted, batch_rows):
    backbone = CausalLM(tiny_lm(VOCAB, dtype=torch.float64))
    if planted:
        backbone = PlantedBias(backbone, [6, 8, 10], [20, 21], 2.5)
    stop_mask = torch.zeros(VOCAB, dtype=torch.bool)
    stop_mask[[2, 3, 14, 15]] = True
    streams = streams_for_two_axes()
    tokens, stats = decode(backbone, streams, top_k=TOP_K, stop_mask=stop_mask, pad_id=0, batch_rows=batch_rows,
                           keep_log_probs=True)
    stopped = 0
    for stream, got, distributions in zip(streams, tokens, stats.log_probs, strict=True):
        expected, expected_distributions = reference(backbone, stream, stop_mask)
        assert got == expected
        assert torch.allclose(distributions, expected_distributions, atol=1e-9, rtol=0)
        stopped += len(got) < STEPS
    assert stopped > 0  # the stop handling (and dropping finished rows) is exercised
    # The sharing is exercised: one prefill row per distinct context, and shared decoding rows.
    assert stats.prefill_rows == 8 and stats.requested_prefill_rows == sum(s.order for s in streams)
    assert stats.computed_row_steps < stats.requested_row_steps
    assert (stats.batches == 1) == (batch_rows == 1000)
    assert stats.generated_tokens == sum(len(t) for t in tokens)


def test_equilm_pair_streams_share_every_row():
    """EquiLM for "The man ..." and "The woman ..." needs the same |G| rows: computed once (half the work)."""
    backbone = CausalLM(tiny_lm(VOCAB))
    perm = permutation([[5, 6]])
    uniform = torch.rand(STEPS, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    prompt = (13, 5, 17, 18)
    image = tuple(perm.permutations[1][torch.tensor(prompt)].tolist())
    streams = [Stream(prompt, "equilm", uniform, perm), Stream(image, "equilm", uniform, perm)]
    tokens, stats = decode(backbone, streams, top_k=TOP_K, stop_mask=torch.zeros(VOCAB, dtype=torch.bool), pad_id=0)
    assert tokens[1] == perm.permutations[1][torch.tensor(tokens[0])].tolist()
    assert stats.requested_row_steps == 4 * (STEPS - 1) and stats.computed_row_steps == 2 * (STEPS - 1)


def test_bad_streams_are_refused():
    backbone = CausalLM(tiny_lm(VOCAB))
    perm = permutation([[0, 6]])
    uniform = torch.rand(STEPS, dtype=torch.float64)
    stop = torch.zeros(VOCAB, dtype=torch.bool)
    with pytest.raises(ValueError, match="pad token is moved"):
        decode(backbone, [Stream((1, 2), "equilm", uniform, perm)], top_k=3, stop_mask=stop, pad_id=0)
    with pytest.raises(ValueError, match="needs a vocabulary permutation"):
        decode(backbone, [Stream((1, 2), "equilm", uniform)], top_k=3, stop_mask=stop, pad_id=0)
    with pytest.raises(ValueError, match="same number of steps"):
        decode(backbone, [Stream((1, 2), "base", uniform), Stream((1, 3), "base", uniform[:3])], top_k=3,
               stop_mask=stop, pad_id=0)
