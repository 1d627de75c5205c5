"""Bootstrap confidence intervals for means of cluster values, resampling clusters within strata.

In the NLG experiment a *cluster* is everything drawn with one seed for one prompt pair: the samples of both
demographics (and of every method and backbone) share that seed's random numbers, so they are dependent and must
be resampled together; clusters of different seeds or templates are independent. A *stratum* is a template: the
templates are a fixed design, not a random draw, so each template keeps its number of clusters in every
resample. Every statistic reported is a mean of per-cluster values (a label fraction: the cluster's share of
samples with that label; a bias gap: the cluster's (negative - positive) of demographic 0 minus demographic 1), so
a resample's statistic is the mean of its resampled cluster values.

Resampling n clusters with replacement underestimates the variance of a mean by the factor (n - 1) / n; with 15
seeds per template that is 7 %, enough to make a 95 % interval cover 93-94 %. Each stratum's resampled mean is
therefore rescaled about its observed mean by sqrt(n / (n - 1)) (the rescaled bootstrap of Rao and Wu, 1988, with
n - 1 draws' variance), which restores the nominal coverage on synthetic data (tests/nlg/test_nlg_bootstrap.py).
The interval is the percentile interval of the resampled means. A statistic that is the same in every cluster
(EquiLM's gap, exactly 0) gets the interval [value, value].
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["bootstrap_means", "mean_with_ci"]


def bootstrap_means(values: Sequence[float], strata: Sequence[Hashable], *, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` bootstrap replicates of the mean of ``values`` (one per cluster), clusters resampled with
    replacement within their stratum and each stratum's deviations rescaled by sqrt(n / (n - 1))."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of cluster values; got shape {values.shape}")
    if len(strata) != values.size:
        raise ValueError(f"{values.size} cluster values but {len(strata)} strata labels")
    codes: dict[Hashable, int] = {}
    labels = np.asarray([codes.setdefault(s, len(codes)) for s in strata])  # strata in first-seen order
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for label in range(len(codes)):
        members = values[labels == label]
        n = members.size
        means = members[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        if n > 1:
            observed = members.mean()
            means = observed + np.sqrt(n / (n - 1)) * (means - observed)
        total += n * means
    return total / values.size


def mean_with_ci(values: Sequence[float], strata: Sequence[Hashable], *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> dict[str, float | list[float]]:
    """``{"value": mean, "ci": [low, high]}``: the mean of the cluster values and its percentile interval."""
    array = np.asarray(values, dtype=np.float64)
    value = float(array.mean())
    if array.size and bool((array == array[0]).all()):
        return {"value": value, "ci": [value, value]}  # no variation to resample (EquiLM's gap): exactly this
    replicates = bootstrap_means(array, strata, resamples=resamples, seed=seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return {"value": value, "ci": [float(low), float(high)]}
