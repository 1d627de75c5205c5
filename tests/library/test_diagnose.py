"""The localiser names the first submodule that breaks the declared symmetry, and the elements that break it.

Models are float64 and small. Equivariant layers are built by symmetrising weights over the group; broken ones are a
plain random conv, or a fixed bias map whose symmetries are known by hand (so the expected broken elements are
written down, not computed with the action under test). Where a test says a model is (not) equivariant, the whole
model is checked with the core's checker too, so a "no break" report cannot pass on a broken model, nor the reverse.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equitune.core import ConfigError, WordCycles, image_action
from equitune.core.checks import TOLERANCES, assert_equivariant, assert_not_equivariant, equivariance_errors
from equitune.diagnose import locate_equivariance_break

DTYPE = torch.float64
SIZE = 7  # odd, so the centre of a bias map is a pixel
D4_NAMES = ("identity", "rot90", "rot180", "rot270", "hflip", "rot90_after_hflip", "vflip", "rot270_after_hflip")
ROUND_OFF = 1e-12  # float64 errors of the symmetrised layers are ~1e-16


# ------------------------------------------------------------------------------------------------ models
class SymmetricConv(nn.Conv2d):
    """A conv whose kernel is averaged over ``action``'s group: it commutes with the group on feature maps."""

    def __init__(self, channels_in: int, channels_out: int, action, kernel_size: int = 3):
        super().__init__(channels_in, channels_out, kernel_size, padding=kernel_size // 2, dtype=DTYPE)
        self.action = action

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.action.transform_all(self.weight).mean(dim=0), self.bias)


class AddMap(nn.Module):
    """Adds a fixed ``[H, W]`` map to every channel: equivariant exactly for the elements that leave the map alone."""

    def __init__(self, bias_map: torch.Tensor, inplace: bool = False):
        super().__init__()
        self.register_buffer("bias_map", bias_map)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(self.bias_map) if self.inplace else x + self.bias_map


class SmallCNN(nn.Module):
    """conv1 -> tanh -> middle -> tanh -> global average pool -> linear: invariant when ``middle`` is equivariant."""

    def __init__(self, action, middle: nn.Module | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = SymmetricConv(3, 4, action)
        self.act1 = nn.Tanh()
        self.middle = middle if middle is not None else SymmetricConv(4, 4, action)
        self.act2 = nn.Tanh()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.act2(self.middle(self.act1(self.conv1(x))))
        return self.head(self.pool(features).flatten(1))


def declarations(action) -> dict:
    return {"conv1": action, "act1": action, "middle": action, "act2": action, "pool": None, "head": None}


CALLS = ["conv1", "act1", "middle", "act2", "pool", "head"]


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def column_ramp() -> torch.Tensor:
    """b[h, w] = w: unchanged exactly by the identity and by mirroring top-bottom (vflip)."""
    return torch.arange(SIZE, dtype=DTYPE).expand(SIZE, SIZE).clone()


def row_distance() -> torch.Tensor:
    """b[h, w] = (h - centre)^2: unchanged by a half turn and by both mirrors, changed by quarter turns."""
    rows = (torch.arange(SIZE, dtype=DTYPE) - SIZE // 2) ** 2
    return rows[:, None].expand(SIZE, SIZE).clone()


# -------------------------------------------------------------------------------------------- image groups
@pytest.mark.parametrize("name", ["c4", "d4"])
def test_an_equivariant_model_has_no_break(name):
    action, x = image_action(name), images()
    model = SmallCNN(action).eval()
    assert_equivariant(model, action, x)
    report = locate_equivariance_break(model, action, x, declarations(action))
    assert report.ok and report.first_break is None
    assert [check.call for check in report.checks] == CALLS
    for check in report.checks:
        assert tuple(check.errors) == action.group.element_names
        assert check.worst_error < ROUND_OFF and check.tolerance >= TOLERANCES[DTYPE]
    assert "no break" in str(report)


@pytest.mark.parametrize("name", ["c4", "d4"])
def test_a_plain_conv_in_the_middle_is_the_first_break(name):
    action, x = image_action(name), images()
    model = SmallCNN(action, middle=nn.Conv2d(4, 4, 3, padding=1, dtype=DTYPE)).eval()
    assert_not_equivariant(model, action, x)
    report = locate_equivariance_break(model, action, x, declarations(action))
    first = report.first_break
    assert first is not None and first.module == "middle" and first.call == "middle"
    non_identity = action.group.element_names[1:]
    assert first.broken_elements == non_identity and first.element == non_identity[0]
    assert first.error > 1e-3 and first.tolerance == pytest.approx(TOLERANCES[DTYPE], rel=0.1)
    rows = {check.call: check for check in report.checks}
    assert rows["conv1"].ok and rows["act1"].ok
    assert all(not rows[call].ok for call in ["middle", "act2", "pool", "head"])  # everything after it looks broken
    table = str(report).splitlines()
    rows_shown = [line for line in table if line.startswith("  ")]
    assert [line for line in rows_shown if "<- first break" in line] == [rows_shown[CALLS.index("middle") + 1]]
    assert table[-1].startswith("first break: 'middle' under element")


def test_a_c4_symmetric_kernel_in_a_d4_model_is_broken_by_the_mirrors_only():
    d4, x = image_action("d4"), images()
    # 5x5: a 3x3 kernel averaged over quarter turns is mirror-symmetric already (corners, edges, centre).
    model = SmallCNN(d4, middle=SymmetricConv(4, 4, image_action("c4"), kernel_size=5)).eval()
    first = locate_equivariance_break(model, d4, x, declarations(d4)).first_break
    assert first.call == "middle"
    assert set(first.broken_elements) == {"hflip", "rot90_after_hflip", "vflip", "rot270_after_hflip"}


def test_a_bias_map_breaks_exactly_the_elements_that_move_it_c4():
    c4, x = image_action("c4"), images()
    bias = row_distance()
    model = SmallCNN(c4, middle=AddMap(bias)).eval()
    first = locate_equivariance_break(model, c4, x, declarations(c4)).first_break
    assert first.call == "middle" and first.broken_elements == ("rot90", "rot270") and first.element == "rot90"
    # The layer before is exact, so the error at the break is the map's own deviation |b - rot90(b)|.
    expected = float((bias - torch.rot90(bias, 1, dims=(-2, -1))).abs().max())
    assert first.error == pytest.approx(expected, abs=1e-12) and expected > 1


def test_a_bias_map_breaks_exactly_the_elements_that_move_it_d4():
    d4, x = image_action("d4"), images()
    report = locate_equivariance_break(SmallCNN(d4, middle=AddMap(column_ramp())).eval(), d4, x, declarations(d4))
    assert report.first_break.call == "middle"
    assert report.first_break.broken_elements == tuple(n for n in D4_NAMES if n not in ("identity", "vflip"))


@pytest.mark.parametrize("broken", [False, True])
def test_the_whole_model_row_agrees_with_the_checker(broken):
    c4, x = image_action("c4"), images()
    model = SmallCNN(c4, middle=AddMap(row_distance()) if broken else None).eval()
    with torch.no_grad():
        model.head.bias.fill_(50.0)  # outputs ~50: the tolerance scales with them
    row = locate_equivariance_break(model, c4, x, {"": None}).checks[0]
    assert row.call == "(model)" and dict(row.errors) == equivariance_errors(model, c4, x)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert scale > 40 and row.tolerance == pytest.approx(TOLERANCES[DTYPE] * scale)
    assert row.ok is not broken
    if broken:
        with pytest.raises(AssertionError):
            assert_equivariant(model, c4, x)
    else:
        assert_equivariant(model, c4, x)


def test_atol_replaces_the_tolerance():
    c4, x = image_action("c4"), images()
    model = SmallCNN(c4, middle=AddMap(row_distance())).eval()
    report = locate_equivariance_break(model, c4, x, declarations(c4), atol=1e6)
    assert report.ok and {check.tolerance for check in report.checks} == {1e6}


# ------------------------------------------------------------------------------------------------- words
VOCAB = ["<pad>", "jump", "run", "walk", "left", "twice", "and"]
CYCLES = WordCycles([["jump", "run", "walk"]])


def symmetrise_matrix(weight: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Average ``W[pi(i), pi(j)]`` over the group: a matrix that commutes with every permutation in it."""
    return torch.stack([weight[p][:, p] for p in permutations]).mean(dim=0)


class TokenScorer(nn.Module):
    """Per-position scores over the vocabulary: embed -> mix -> tanh -> head, every width the vocabulary size."""

    def __init__(self, equivariant_mix: bool = True):
        super().__init__()
        torch.manual_seed(0)
        size = len(VOCAB)
        self.embed = nn.Embedding(size, size, dtype=DTYPE)
        self.mix = nn.Linear(size, size, dtype=DTYPE)
        self.act = nn.Tanh()
        self.head = nn.Linear(size, size, dtype=DTYPE)
        permutations = CYCLES.bind(VOCAB).permutations
        with torch.no_grad():
            for layer in (self.embed, self.mix, self.head):
                if layer is self.mix and not equivariant_mix:
                    continue
                layer.weight.copy_(symmetrise_matrix(layer.weight, permutations))
                if getattr(layer, "bias", None) is not None:
                    layer.bias.copy_(torch.stack([layer.bias[p] for p in permutations]).mean(dim=0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.mix(self.embed(ids))))


def token_ids() -> torch.Tensor:
    return torch.tensor([[1, 2, 4, 3, 0], [3, 3, 5, 1, 6]])


def test_a_word_cycle_of_order_three_on_token_ids():
    bound = CYCLES.bind(VOCAB)
    ids_action, scores_action = bound.on_ids, bound.on_scores
    assert ids_action.group.order == 3
    everywhere = {"embed": scores_action, "mix": scores_action, "act": scores_action, "head": scores_action}
    model = TokenScorer().eval()
    assert_equivariant(model, ids_action, token_ids(), scores_action)
    assert locate_equivariance_break(model, ids_action, token_ids(), everywhere).ok

    broken = TokenScorer(equivariant_mix=False).eval()
    assert_not_equivariant(broken, ids_action, token_ids(), scores_action)
    first = locate_equivariance_break(broken, ids_action, token_ids(), everywhere).first_break
    assert first.call == "mix" and first.broken_elements == ("shift1", "shift2")

    # Declaring the embedding invariant is wrong: its output moves with the words, and the report says so.
    wrong = locate_equivariance_break(model, ids_action, token_ids(), {**everywhere, "embed": None})
    assert wrong.first_break.call == "embed" and "invariant" in str(wrong)


# ------------------------------------------------------------------------------------ calls and outputs
class TwiceCNN(nn.Module):
    """The same conv and tanh called twice, with an optional map added between the calls."""

    def __init__(self, action, conv: nn.Module | None = None, between: nn.Module | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = conv if conv is not None else SymmetricConv(3, 3, action)
        self.act = nn.Tanh()
        self.between = between if between is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.between(self.act(self.conv(x))))).mean(dim=(-2, -1))


def test_layers_called_twice_get_one_row_per_call():
    c4, x = image_action("c4"), images()
    declared = {"conv": c4, "act": c4, "between": c4, "": None}
    report = locate_equivariance_break(TwiceCNN(c4).eval(), c4, x, declared)
    assert [check.call for check in report.checks] == ["conv#1", "act#1", "between", "conv#2", "act#2", "(model)"]
    assert report.ok and {check.module for check in report.checks} == {"conv", "act", "between", ""}

    broken_between = locate_equivariance_break(TwiceCNN(c4, between=AddMap(row_distance())).eval(), c4, x, declared)
    rows = {check.call: check for check in broken_between.checks}
    assert broken_between.first_break.call == "between" and rows["conv#1"].ok and not rows["conv#2"].ok

    plain = nn.Conv2d(3, 3, 3, padding=1, dtype=DTYPE)
    first = locate_equivariance_break(TwiceCNN(c4, conv=plain).eval(), c4, x, declared).first_break
    assert (first.call, first.module) == ("conv#1", "conv")


class SplitHead(nn.Module):
    """Returns the feature map and its spatial mean: an equivariant and an invariant tensor in one tuple."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.mean(dim=(-2, -1))


class WithSplit(nn.Module):
    def __init__(self, action):
        super().__init__()
        self.conv = SymmetricConv(3, 4, action)
        self.split = SplitHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, pooled = self.split(self.conv(x))
        return pooled


def test_tuple_outputs_are_compared_tensor_by_tensor():
    c4, x = image_action("c4"), images()
    model = WithSplit(c4).eval()
    report = locate_equivariance_break(model, c4, x, {"split": (c4, None)})
    assert [(check.call, check.declared) for check in report.checks] == [("split[0]", "ImageAction('c4')"),
                                                                         ("split[1]", "invariant")]
    assert report.ok
    # Declaring the pooled tensor equivariant too is caught: a [B, C] tensor is not an image.
    with pytest.raises(ConfigError, match=r"'split\[1\]'.*cannot act on its output of shape \(2, 4\)"):
        locate_equivariance_break(model, c4, x, {"split": c4})
    with pytest.raises(ConfigError, match="2 tensor"):
        locate_equivariance_break(model, c4, x, {"split": (c4, None, None)})
    # The invariant slot declared equivariant the other way round: the first tensor is the break.
    assert locate_equivariance_break(model, c4, x, {"split": (None, None)}).first_break.call == "split[0]"


def test_a_later_in_place_op_does_not_rewrite_a_recorded_output():
    c4, x = image_action("c4"), images()
    model = nn.Sequential(SymmetricConv(3, 4, c4), AddMap(row_distance(), inplace=True)).eval()
    report = locate_equivariance_break(model, c4, x, {"0": c4, "1": c4})
    assert report.checks[0].ok and report.first_break.call == "1"


# ---------------------------------------------------------------------------------------- misuse
def test_an_unknown_name_suggests_the_close_ones():
    c4, x = image_action("c4"), images()
    with pytest.raises(ConfigError, match=r"no submodule named 'conv_1'; did you mean 'conv1'\?.*act1"):
        locate_equivariance_break(SmallCNN(c4).eval(), c4, x, {"conv_1": c4})


def test_actions_of_another_group_are_rejected():
    c4, x = image_action("c4"), images()
    with pytest.raises(ConfigError, match=r"'conv1' is of group 'd4' \(order 8\).*'c4' \(order 4\)"):
        locate_equivariance_break(SmallCNN(c4).eval(), c4, x, {"conv1": image_action("d4")})
    with pytest.raises(ConfigError, match="unbound WordCycles"):
        locate_equivariance_break(SmallCNN(c4).eval(), c4, x, {"conv1": CYCLES})


@pytest.mark.parametrize("bad", [{}, ["conv1"], {"conv1": "c4"}])
def test_malformed_declarations(bad):
    c4 = image_action("c4")
    with pytest.raises(ConfigError):
        locate_equivariance_break(SmallCNN(c4).eval(), c4, images(), bad)


def test_a_declared_submodule_that_never_runs():
    c4 = image_action("c4")
    model = SmallCNN(c4)
    model.unused = nn.Tanh()
    model.eval()
    with pytest.raises(ConfigError, match=r"\['unused'\] did not run"):
        locate_equivariance_break(model, c4, images(), {"unused": c4})


def test_training_mode_warns_and_dropout_shows_why():
    c4, x = image_action("c4"), images()
    model = SmallCNN(c4, middle=nn.Sequential(SymmetricConv(4, 4, c4), nn.Dropout(0.5)))
    declared = {"middle.0": c4, "middle.1": c4}
    with pytest.warns(RuntimeWarning, match=r"training mode.*model\.eval\(\)"):
        report = locate_equivariance_break(model, c4, x, declared)
    assert report.first_break.call == "middle.1"  # fresh dropout masks on x and g x
    assert locate_equivariance_break(model.eval(), c4, x, declared).ok


class CornerDependent(nn.Module):
    """Calls its tanh a second time when the top-left pixel is positive: the calls on x and g x differ."""

    def __init__(self):
        super().__init__()
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(x)
        return self.act(y) if x[0, 0, 0, 0] > 0 else y


def test_input_dependent_calls_cannot_be_matched():
    c4, x = image_action("c4"), images()
    x[0, 0, 0, 0], x[0, 0, -1, 0] = 1.0, -1.0  # a quarter turn brings the negative bottom-left corner to the top left
    with pytest.raises(RuntimeError, match="different number of times|cannot be matched"):
        locate_equivariance_break(CornerDependent().eval(), c4, x, {"act": c4})


class LogOfCorner(nn.Module):
    """log of the top-left pixel: NaN once a turn brings a negative corner there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x[..., 0, 0])


def test_a_nan_counts_as_broken():
    c4, x = image_action("c4"), images()
    x[..., 0, 0] = 1.0
    x[..., 0, -1] = x[..., -1, 0] = x[..., -1, -1] = -1.0  # every other corner negative
    report = locate_equivariance_break(nn.Sequential(LogOfCorner()).eval(), c4, x, {"0": None})
    first = report.first_break
    assert first.broken_elements == ("rot90", "rot180", "rot270") and math.isnan(first.error)
    assert math.isnan(report.checks[0].worst_error) and report.checks[0].errors["identity"] == 0.0
