"""Equizero's proxies: one registry for class logits and sequences; the most confident element scores lowest;
masks keep padding (or steps after <eos>) out of a sequence's score."""

from __future__ import annotations

import math

import pytest
import torch

from equitune.core.errors import ConfigError
from equitune.core.proxies import PROXIES, ProxyScore, example_scores, get_proxy


def test_every_proxy_scores_the_confident_distribution_lower():
    confident, unsure = torch.tensor([8.0, 0.0, 0.0]), torch.tensor([1.0, 0.9, 0.8])
    for name, proxy in PROXIES.items():
        assert proxy(confident) < proxy(unsure), name


def test_proxies_are_the_same_on_logits_and_on_log_probabilities():
    logits = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for proxy in PROXIES.values():
        torch.testing.assert_close(proxy(logits), proxy(torch.log_softmax(logits, -1)), rtol=0, atol=1e-12)


def test_entropy_of_a_masked_vocabulary_is_finite():
    logits = torch.tensor([[0.0, -math.inf, 1.0]])
    assert torch.isfinite(PROXIES["entropy"](logits)).all()


def test_unknown_proxy_lists_the_allowed_names():
    with pytest.raises(ConfigError, match="entropy, max_prob, max_log_prob"):
        get_proxy("confidence")


def test_example_scores_average_over_the_positions_a_mask_keeps():
    per_position = torch.tensor([[[1.0, 2.0, 100.0]], [[3.0, 5.0, 100.0]]])  # [|G|=2, B=1, T=3]
    torch.testing.assert_close(example_scores(per_position), torch.tensor([[103 / 3], [108 / 3]]))
    shared = torch.tensor([[True, True, False]])  # [B, T]: the last position is padding
    assert example_scores(per_position, shared).tolist() == [[1.5], [4.0]]
    per_element = torch.tensor([[[True, False, False]], [[True, True, False]]])  # [|G|, B, T]
    assert example_scores(per_position, per_element).tolist() == [[1.0], [4.0]]


def test_proxy_score_applies_its_mask():
    outputs = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))  # [|G|, B, T, V]
    score = ProxyScore("max_log_prob")
    unmasked = score(outputs)
    score.mask = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(score(outputs), unmasked)
    score.mask[:, 2:] = False
    torch.testing.assert_close(score(outputs), PROXIES["max_log_prob"](outputs)[..., :2].mean(-1))
