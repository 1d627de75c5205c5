"""The equivariance checker: zero for equivariant functions, the exact deviation otherwise, and loud on misuse."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equitune.core.checks import assert_equivariant, assert_not_equivariant, equivariance_error, equivariance_errors
from equitune.core.groups import IMAGE_GROUPS, WordCycles, image_action, parse_group_spec

VOCAB = ["<pad>", "walk", "look", "run", "jump", "and"]


class Function(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(*inputs)


def images(seed: int = 0, shape=(2, 3, 5, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", IMAGE_GROUPS)
def test_pointwise_maps_are_equivariant_and_spatial_sums_invariant(name):
    action, x = image_action(name), images()
    assert equivariance_error(Function(torch.tanh), action, x, action) == 0.0
    assert equivariance_error(Function(lambda t: t.sum(dim=(-2, -1))), action, x) < 1e-12


def test_invariance_error_is_the_exact_deviation_per_element():
    action, x = image_action("hflip"), images()
    corner = Function(lambda t: t[..., 0, 0])  # the top-left pixel: hflip swaps it for the top-right one
    errors = equivariance_errors(corner, action, x)
    assert errors == {"identity": 0.0, "hflip": float((x[..., 0, -1] - x[..., 0, 0]).abs().max())}
    assert equivariance_error(corner, action, x) == errors["hflip"] > 0


def test_errors_are_reported_for_the_right_element():
    # A running sum along the width commutes with mirroring top-bottom but not with mirroring left-right.
    action, x = image_action("d4"), images()
    errors = equivariance_errors(Function(lambda t: t.cumsum(dim=-1)), action, x, action)
    assert set(errors) == set(action.group.element_names)
    assert errors["identity"] == 0.0 and errors["vflip"] < 1e-12
    assert all(errors[name] > 1e-3 for name in errors if name not in ("identity", "vflip"))


def test_word_permutations():
    cycles = WordCycles([["walk", "look", "run"]])
    ids_action, scores_action = cycles.bind(VOCAB).on_ids, cycles.bind(VOCAB).on_scores
    ids = torch.tensor([[1, 5, 2, 3], [4, 1, 1, 0]])
    one_hot = Function(lambda t: nn.functional.one_hot(t, len(VOCAB)).double())
    assert equivariance_error(one_hot, ids_action, ids, scores_action) == 0.0
    assert equivariance_error(one_hot, ids_action, ids) == 1.0  # not invariant: the words do move
    counts = Function(lambda t: nn.functional.one_hot(t, len(VOCAB)).sum(dim=1).double())
    assert equivariance_error(counts, ids_action, ids, scores_action) == 0.0


def test_inputs_left_alone():
    action, x = image_action("c4"), images()
    scale = torch.tensor([2.0, -1.0], dtype=torch.float64)
    scaled_sum = Function(lambda t, s: t.sum(dim=(1, 2, 3)) * s)
    assert equivariance_error(scaled_sum, (action, None), (x, scale)) < 1e-12
    scaled_corner = Function(lambda t, s: t[:, 0, 0, 0] * s)
    assert equivariance_error(scaled_corner, (action, None), (x, scale)) > 1e-3


def test_returns_a_float_and_records_no_gradients():
    linear = nn.Linear(5, 5).double()
    error = equivariance_error(linear, image_action("hflip"), images(), image_action("hflip"))
    assert isinstance(error, float) and error > 1e-3
    assert all(p.grad is None for p in linear.parameters())


def test_nan_output_is_never_reported_as_equivariant():
    # max() over Python floats silently skips NaN when it is not first: the checker must not.
    action, x = image_action("c4"), images()

    def nan_unless_upright(t):
        upright = torch.equal(t, x)
        return t.sum(dim=(-2, -1)) * (1.0 if upright else math.nan)

    assert math.isnan(equivariance_error(Function(nan_unless_upright), action, x))
    assert math.isnan(equivariance_errors(Function(nan_unless_upright), action, x)["rot90"])


def test_input_and_action_counts_must_match():
    action = image_action("c4")
    with pytest.raises(ValueError, match=r"2 input\(s\) but 1 input action\(s\)"):
        equivariance_error(Function(lambda t, s: t), action, (images(), images()))


def test_needs_an_acted_on_input():
    with pytest.raises(ValueError, match="at least one input action"):
        equivariance_error(Function(lambda t: t), (None,), (images(),))


def test_output_action_of_another_group():
    with pytest.raises(ValueError, match=r"one group.*'c4' \(order 4\).*'d4' \(order 8\)"):
        equivariance_error(Function(lambda t: t), image_action("c4"), images(), image_action("d4"))


def test_output_shape_that_depends_on_the_group_element():
    cycles = WordCycles([["jump", "run"]])
    ids = torch.tensor([4, 4, 3, 0])
    drop_jumps = Function(lambda t: t[t != VOCAB.index("jump")].double())
    with pytest.raises(ValueError, match=r"shape.*element 'shift1'.*\(3,\).*\(2,\)"):
        equivariance_error(drop_jumps, cycles.bind(VOCAB).on_ids, ids)


# ------------------------------------------------------------------- assert_equivariant: the tests' assertion
def test_assert_equivariant_passes_and_returns_the_errors():
    action = image_action("d4")
    errors = assert_equivariant(Function(lambda t: t.sum(dim=(-2, -1))), action, images())
    assert set(errors) == set(action.group.element_names) and max(errors.values()) < 1e-12


def test_assert_equivariant_names_each_failing_element():
    action = image_action("c4")
    corner = Function(lambda t: t[..., 0, 0])  # moved by every rotation, unchanged by the identity
    with pytest.raises(AssertionError) as failure:
        assert_equivariant(corner, action, images())
    message = str(failure.value)
    assert "3 of 4 element(s)" in message and "torch.float64" in message
    assert all(f"element {name!r}" in message for name in ("rot90", "rot180", "rot270"))
    assert "'identity'" not in message


@pytest.mark.parametrize("dtype, error, passes", [
    (torch.float64, 1e-11, True), (torch.float64, 1e-9, False),
    (torch.float32, 1e-6, True), (torch.float32, 1e-3, False),
])
def test_assert_equivariant_tolerance_follows_the_output_dtype(dtype, error, passes):
    action = image_action("hflip")
    x = images().to(dtype)

    def nearly_invariant(t: torch.Tensor) -> torch.Tensor:
        # Invariant sum, plus `error` whenever the left column is larger than the right one (flip-sensitive).
        flag = (t[..., :, 0].sum(-1) > t[..., :, -1].sum(-1)).to(t.dtype)
        return t.sum(dim=(-2, -1)) * 0 + flag * error

    model = Function(nearly_invariant)
    if passes:
        assert_equivariant(model, action, x)
    else:
        with pytest.raises(AssertionError, match="not equivariant within"):
            assert_equivariant(model, action, x)


def test_assert_equivariant_scales_the_tolerance_with_the_outputs():
    action = image_action("hflip")
    x = images()
    flag = lambda t: (t[..., :, 0].sum(-1) > t[..., :, -1].sum(-1)).to(t.dtype)  # noqa: E731
    big = Function(lambda t: 1e6 + flag(t) * 1e-5)  # a 1e-11 relative difference on outputs of size 1e6
    assert_equivariant(big, action, x)
    with pytest.raises(AssertionError):
        assert_equivariant(big, action, x, atol=1e-6)


def test_assert_equivariant_is_exact_on_integer_outputs_and_fails_on_nan():
    cycles = parse_group_spec({"cycles": [["jump", "run"]]})
    ids_action = cycles.bind(VOCAB).on_ids
    ids = torch.tensor([[1, 2, 3, 0]])
    assert_equivariant(Function(lambda t: t), ids_action, ids, ids_action)
    with pytest.raises(AssertionError):
        assert_equivariant(Function(lambda t: (t + 1) % len(VOCAB)), ids_action, ids, ids_action)
    action = image_action("c4")
    nan_unless_upright = Function(lambda t: t.sum(dim=(-2, -1)) + (0 if t[0, 0, 0, 0] == images()[0, 0, 0, 0] else math.nan))
    with pytest.raises(AssertionError, match="nan"):
        assert_equivariant(nan_unless_upright, action, images())


def test_assert_not_equivariant():
    action = image_action("c4")
    assert assert_not_equivariant(Function(lambda t: t[..., 0, 0]), action, images()) > 1e-3
    with pytest.raises(AssertionError, match="expected a model that is not equivariant"):
        assert_not_equivariant(Function(lambda t: t.sum(dim=(-2, -1))), action, images())


def test_assert_equivariant_reads_a_wrappers_own_actions():
    from equitune.core.wrappers import EquiTune
    c4 = image_action("c4")
    torch.manual_seed(0)
    features = torch.nn.Conv2d(3, 2, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert_equivariant(EquiTune(features, c4, output_action=c4), x)   # feature maps: the wrapper's output action

    class Declared(torch.nn.Module):  # declares C4 invariance but is not invariant: must fail
        input_actions, output_action = (c4,), None

        def forward(self, images):
            return features(images).flatten(1)

    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(Declared(), x)
    with pytest.raises(TypeError, match="does not declare its actions"):
        assert_equivariant(features, x)
