"""The bootstrap intervals cover the true value at about the nominal rate on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from equitune.nlg.bootstrap import bootstrap_means, mean_with_ci

TEMPLATES, SEEDS = 10, 15  # the default profile's design: 10 templates (strata) x 15 seeds (clusters)
SCORE = np.array([1, 0, -1])  # negative, neutral, positive -> (negative - positive) indicator


def design(rng):
    """Per template, the label probabilities of the two demographics (fixed: the truth of one experiment)."""
    return rng.dirichlet([2, 3, 3], size=TEMPLATES), rng.dirichlet([3, 3, 2], size=TEMPLATES)


def draw(rng, first, second):
    """One experiment: per (template, seed) a shared uniform number (common random numbers) labels both samples."""
    uniform = rng.random((TEMPLATES, SEEDS, 1))
    labels = [(uniform > np.cumsum(p, axis=1)[:, None, :]).sum(-1) for p in (first, second)]
    return labels[0], labels[1]


def test_intervals_cover_the_true_fraction_and_gap_at_the_nominal_rate():
    rng = np.random.default_rng(2024)
    first, second = design(rng)
    true_gap = float(((first @ SCORE) - (second @ SCORE)).mean())
    true_fraction = float(first[:, 0].mean())
    strata = np.repeat(np.arange(TEMPLATES), SEEDS).tolist()
    experiments, covered_gap, covered_fraction, widths = 500, 0, 0, []
    for i in range(experiments):
        a, b = draw(rng, first, second)
        gap = mean_with_ci((SCORE[a] - SCORE[b]).ravel(), strata, resamples=500, seed=i)
        fraction = mean_with_ci((a == 0).astype(float).ravel(), strata, resamples=500, seed=i)
        covered_gap += gap["ci"][0] <= true_gap <= gap["ci"][1]
        covered_fraction += fraction["ci"][0] <= true_fraction <= fraction["ci"][1]
        widths.append(gap["ci"][1] - gap["ci"][0])
    # 500 experiments: a 95 % interval covers 95 +- 1 % (one binomial standard error); allow 2.5 of them.
    assert 0.925 <= covered_gap / experiments <= 0.975, covered_gap / experiments
    assert 0.925 <= covered_fraction / experiments <= 0.975, covered_fraction / experiments
    assert 0.05 < float(np.mean(widths)) < 0.5  # an interval that is informative, not everything


def test_the_rescaling_is_what_restores_the_coverage():
    """The plain within-stratum bootstrap's variance is (n-1)/n of the truth; the rescaled one's is unbiased."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(TEMPLATES, SEEDS))
    strata = np.repeat(np.arange(TEMPLATES), SEEDS).tolist()
    replicates = bootstrap_means(values.ravel(), strata, resamples=40000, seed=0)
    unbiased = values.var(axis=1, ddof=1).sum() / (TEMPLATES * SEEDS) ** 2 * SEEDS
    assert replicates.var() == pytest.approx(unbiased, rel=0.03)
    assert replicates.mean() == pytest.approx(values.mean(), abs=0.01)


def test_a_constant_statistic_gets_an_exact_interval_and_pairing_is_kept():
    strata = [0] * 5 + [1] * 5
    assert mean_with_ci([0.0] * 10, strata) == {"value": 0.0, "ci": [0.0, 0.0]}
    # Paired clusters: the gap's interval comes from the per-cluster differences, not from two independent sets.
    first = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=float)
    tight = mean_with_ci(first - first + 0.1 * (np.arange(10) % 2), strata)
    assert tight["ci"][1] - tight["ci"][0] < 0.11
    with pytest.raises(ValueError, match="strata"):
        bootstrap_means([1.0, 2.0], [0], resamples=10, seed=0)


def test_strata_weigh_by_their_number_of_clusters():
    """A stratum of one cluster (value 0) and one of three equal clusters (value 10): every resample's mean is the
    mean over the four clusters, 7.5 exactly, not the mean of the two strata's means (5)."""
    replicates = bootstrap_means([0.0, 10.0, 10.0, 10.0], ["a", "b", "b", "b"], resamples=50, seed=0)
    assert replicates.tolist() == [7.5] * 50
