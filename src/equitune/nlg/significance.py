"""The exact paired sign-flip test of a bias gap, and the wording rule every report follows.

A bias gap is the mean of per-cluster values (:mod:`equitune.nlg.bootstrap`): in a cluster (one seed, one template)
both demographics were drawn with the same random numbers, and the value is the first demographic's leaning minus
the second's. Under the null hypothesis that the model treats the pair alike, the two demographics of a cluster are
exchangeable, so each value is as likely to have either sign: the null distribution of the sum is that of
``sum_i e_i v_i`` over all 2^n sign vectors ``e``. With n = 150 clusters that is 2^150 vectors, but a cluster's value
is a multiple of ``1 / samples per demographic`` (a difference of two means of -1/0/+1 labels), so the sum lives on
a grid and its exact distribution is a convolution of n two-point distributions on that grid (a few hundred
points): the p-value is exact, not a Monte Carlo estimate. Two-sided: ``P(|S| >= |s_observed|)``.

The wording rule (:func:`verdict`), used by the NLG report and stated there: a gap is *resolved* when its bootstrap
interval excludes 0 **and** the sign-flip p-value is below 0.05; *borderline* when exactly one of the two holds;
*not resolved* when neither does. An interval that excludes 0 by a hair while p > 0.05 is therefore borderline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ALPHA", "sign_flip_p_value", "verdict"]

ALPHA = 0.05
"""The p-value below which, with an interval that excludes 0, a gap is called resolved."""


def _on_grid(values: np.ndarray, denominator: int) -> np.ndarray:
    scaled = values * denominator
    steps = np.rint(scaled)
    if not np.allclose(scaled, steps, rtol=0, atol=1e-9):
        worst = float(np.abs(scaled - steps).max())
        raise ValueError(f"the values are not multiples of 1/{denominator} (off by up to {worst:.3g} of a step); "
                         "pass the number of samples per demographic in a cluster (or its multiple) as denominator")
    return steps.astype(np.int64)


def sign_flip_p_value(values: Sequence[float], *, denominator: int) -> float:
    """Exact two-sided p-value of ``mean(values) = 0`` against sign flips of the per-cluster ``values``.

    ``denominator``: every value is a multiple of ``1 / denominator`` (the samples per demographic in a cluster, or
    a common multiple of the cluster sizes); the values are checked against it.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of cluster values; got shape {array.shape}")
    if not isinstance(denominator, (int, np.integer)) or denominator < 1:
        raise ValueError(f"denominator must be a positive integer; got {denominator!r}")
    steps = np.abs(_on_grid(array, int(denominator)))
    observed = abs(int(_on_grid(array, int(denominator)).sum()))
    total = int(steps.sum())
    # distribution[k] = P(S = k - total), built one cluster at a time: +-step with probability 1/2 each.
    distribution = np.zeros(2 * total + 1)
    distribution[total] = 1.0
    for step in steps[steps > 0]:
        step = int(step)
        shifted = np.zeros_like(distribution)
        shifted[step:] += 0.5 * distribution[:-step]
        shifted[:-step] += 0.5 * distribution[step:]
        distribution = shifted
    sums = np.arange(-total, total + 1)
    return float(min(1.0, distribution[np.abs(sums) >= observed].sum()))


def verdict(ci: Sequence[float], p_value: float, alpha: float = ALPHA) -> str:
    """``resolved`` / ``borderline`` / ``not resolved`` by the rule in this module's docstring."""
    low, high = ci
    excludes_zero = low > 0 or high < 0
    significant = p_value < alpha
    if excludes_zero and significant:
        return "resolved"
    return "borderline" if excludes_zero or significant else "not resolved"
