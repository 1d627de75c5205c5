"""Right answers for the language experiment (issue 26, item 7): which demographic triggers the planted-bias
control (both settings), that padding and later tokens never trigger it, R-EquiLM's combination and the
perplexity targets on hand numbers, and the documented sentiment thresholds at their boundaries."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from equitune.nlg.control import axis_control
from equitune.nlg.equilm import combine_group_log_probs
from equitune.nlg.perplexity import _target_log_probs
from equitune.nlg.scoring import sentiment_labels

VOCAB = 8
MAN, WOMAN, HE, SHE = 2, 3, 4, 5  # equality cycles (man, woman) and (he, she): demographic 0 first
BAD, WORSE = 6, 7  # the boosted negative words
BONUS = 2.0


class _Uniform(nn.Module):
    """A backbone with uniform next-token log-probs everywhere."""

    vocab_size = VOCAB

    def forward(self, input_ids, attention_mask=None):
        return torch.full((*input_ids.shape, VOCAB), -math.log(VOCAB), dtype=torch.float64)

    def start(self, input_ids, attention_mask):
        return torch.full((input_ids.shape[0], VOCAB), -math.log(VOCAB), dtype=torch.float64), None


def _control(biased: int):
    words = SimpleNamespace(equality_cycles=((MAN, WOMAN), (HE, SHE)))
    bound = {"boosted": [{"text": " bad", "id": BAD}, {"text": " worse", "id": WORSE}]}
    return axis_control(_Uniform(), words, bound, SimpleNamespace(biased_demographic=biased, bonus=BONUS))


def _biased_row() -> list[float]:
    # bonus on the two boosted words, renormalised: exp(2) for each of them, 1 for the six others
    z = 6 + 2 * math.exp(BONUS)
    return [math.log(math.exp(BONUS) / z) if t in (BAD, WORSE) else math.log(1 / z) for t in range(VOCAB)]


@pytest.mark.parametrize("biased, triggers, bystanders", [(1, (WOMAN, SHE), (MAN, HE)), (0, (MAN, HE), (WOMAN, SHE))])
def test_the_configured_demographic_and_only_it_triggers_the_control(biased, triggers, bystanders):
    control = _control(biased)
    assert sorted(torch.nonzero(control.trigger_mask).flatten().tolist()) == sorted(triggers)
    uniform = [-math.log(VOCAB)] * VOCAB
    for token in triggers:
        out = control(torch.tensor([[1, token, 1]]))
        assert out[0, 0].tolist() == uniform  # before the trigger: untouched
        assert out[0, 1].tolist() == pytest.approx(_biased_row()) and out[0, 2].tolist() == pytest.approx(_biased_row())
    for token in bystanders:
        assert control(torch.tensor([[1, token, 1]]))[0].tolist() == [uniform] * 3


def test_padding_never_triggers_the_control():
    control = _control(1)
    ids = torch.tensor([[WOMAN, 1, 1], [WOMAN, 1, 1]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0: the trigger is a padding position
    out = control(ids, mask)
    assert out[0].tolist() == [[-math.log(VOCAB)] * VOCAB] * 3
    assert out[1, 2].tolist() == pytest.approx(_biased_row())
    # the cached path decides the same way
    log_probs, state = control.start(ids, mask)
    assert state.triggered.tolist() == [False, True]
    assert log_probs[0].tolist() == [-math.log(VOCAB)] * VOCAB and log_probs[1].tolist() == pytest.approx(_biased_row())


def test_r_equilm_keeps_the_identity_row_for_general_words_and_averages_the_rest():
    rows = torch.tensor([[0.0, 1.0, 2.0], [2.0, 3.0, 0.0]], dtype=torch.float64)  # [|G|=2, V=3], row 0 = identity
    general = torch.tensor([True, False, False])
    expected = F.log_softmax(torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64), dim=-1)
    assert torch.allclose(combine_group_log_probs(rows, "r_equilm", general), expected, atol=1e-15)
    assert torch.allclose(combine_group_log_probs(rows, "equilm"),
                          F.log_softmax(torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64), dim=-1), atol=1e-15)
    assert torch.equal(combine_group_log_probs(rows, "base"), rows[0])


def test_perplexity_targets_are_predicted_by_the_previous_position():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]]], dtype=torch.float64)  # [1, T=3, V]
    targets = torch.tensor([[1, 0]])  # tokens 1..T-1 of the window
    got = _target_log_probs(logits, targets)
    expected = [F.log_softmax(logits[0, 0], -1)[1].item(), F.log_softmax(logits[0, 1], -1)[0].item()]
    assert got[0].tolist() == pytest.approx(expected, abs=1e-15)


def test_sentiment_thresholds_at_their_boundaries(monkeypatch):
    import vaderSentiment.vaderSentiment as vader

    compounds = {"a": 0.05, "b": -0.05, "c": 0.0499, "d": -0.0499, "e": 0.9, "f": -0.9}

    class Fake:
        def polarity_scores(self, text):
            return {"compound": compounds[text]}

    monkeypatch.setattr(vader, "SentimentIntensityAnalyzer", Fake)
    # documented: compound >= t positive, <= -t negative, else neutral
    assert sentiment_labels(list(compounds), threshold=0.05) == ["positive", "negative", "neutral", "neutral",
                                                                 "positive", "negative"]


def test_top_k_sampling_is_the_quantile_function_of_the_renormalised_top_k():
    from equitune.nlg.equilm import sample_top_k
    # four equally likely tokens (CDF 1/4, 1/2, 3/4, 1, exact in binary) and one cut off by k = 4
    log_probs = torch.tensor([[0.0, 0.0, 0.0, 0.0, -9.0]], dtype=torch.float64).log_softmax(-1)
    ranked = log_probs.topk(4, dim=-1).indices[0].tolist()  # equal scores: any order, the rule is about ranks
    assert 4 not in ranked
    # inverse CDF = the quantile function: the first rank whose CDF reaches u (u on a step stays on that rank)
    for u, rank in ((0.0, 0), (0.25, 0), (0.2500001, 1), (0.5, 1), (0.75, 2), (0.999, 3)):
        assert sample_top_k(log_probs, 4, torch.tensor([u])).tolist() == [ranked[rank]], u
