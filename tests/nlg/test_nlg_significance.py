"""The exact sign-flip p-value against hand counts and brute force, and the wording rule's four cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from equitune.nlg.significance import sign_flip_p_value, verdict


@pytest.mark.parametrize(("values", "denominator", "expected"), [
    ([1, 1, 1], 1, 2 / 8),        # only +++ and --- reach |sum| = 3
    ([2, 1], 1, 2 / 4),           # sums 3, 1, -1, -3: |sum| >= 3 twice
    ([2, -1], 1, 1.0),            # |observed| = 1: every sign vector reaches it
    ([0.5, 0.5], 2, 2 / 4),       # half steps: one sample per demographic out of two
    ([0, 0, 0], 1, 1.0),          # EquiLM's exactly-zero gaps
    ([-2] * 10, 1, 2 / 1024),
])
def test_p_values_by_hand(values, denominator, expected):
    assert sign_flip_p_value(values, denominator=denominator) == pytest.approx(expected, abs=1e-15)


def test_p_values_equal_brute_force_enumeration():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, denominator = int(rng.integers(1, 11)), int(rng.integers(1, 4))
        values = rng.integers(-2 * denominator, 2 * denominator + 1, size=n) / denominator
        observed = abs(round(values.sum() * denominator))
        hits = sum(abs(round(float(np.dot(signs, values)) * denominator)) >= observed
                   for signs in itertools.product((-1, 1), repeat=n))
        assert sign_flip_p_value(values, denominator=denominator) == pytest.approx(hits / 2 ** n, abs=1e-12)


def test_values_off_the_grid_are_refused_with_the_step():
    with pytest.raises(ValueError, match="multiples of 1/2"):
        sign_flip_p_value([0.5, 1 / 3], denominator=2)
    with pytest.raises(ValueError, match="positive integer"):
        sign_flip_p_value([1.0], denominator=0)


@pytest.mark.parametrize(("ci", "p", "expected"), [
    ([0.082, 0.365], 0.005, "resolved"),
    ([0.008, 0.339], 0.057, "borderline"),      # the interval excludes 0 by a hair, the test does not reject
    ([-0.010, 0.190], 0.03, "borderline"),
    ([-0.164, 0.105], 0.6, "not resolved"),
    ([-0.872, -0.561], 1e-9, "resolved"),
])
def test_the_wording_rule(ci, p, expected):
    assert verdict(ci, p) == expected
