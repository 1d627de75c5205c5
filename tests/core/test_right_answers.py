"""Right answers for the core, computed by hand (issue 26, item 7): beside the self-consistency tests, these know
what the numbers must be. Group axioms on both sides, the direction of each action, equizero's documented tie
rule, lambda-equitune's weights and the masked proxy mean on small hand-made cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from equitune.core.groups import FiniteGroup, GroupSpecError, WordCycles, image_action
from equitune.core.proxies import entropy, example_scores, max_log_prob, max_prob
from equitune.core.wrappers import EquiZero, LambdaEquiTune

# ------------------------------------------------------------------------------------------ group axioms
# Each table below is wrong on one side only (or only in associativity): a group must be refused.
LEFT_IDENTITY_ONLY = ((0, 1), (0, 1))  # 0 * b = b for all b, but 1 * 0 = 0 != 1
RIGHT_IDENTITY_ONLY = ((0, 0), (1, 1))  # b * 0 = b for all b, but 0 * 1 = 0 != 1
# e * x = x * e = x; a * b = e but b * a = a: b is a right inverse of a and not a left one.
ONE_SIDED_INVERSE = ((0, 1, 2), (1, 2, 0), (2, 1, 0))
# The smallest loop that is not a group: a Latin square with a two-sided identity and two-sided inverses
# (every element is its own inverse), but (1 * 1) * 2 = 2 while 1 * (1 * 2) = 1 * 3 = 4.
NON_ASSOCIATIVE_LOOP = (
    (0, 1, 2, 3, 4),
    (1, 0, 3, 4, 2),
    (2, 4, 0, 1, 3),
    (3, 2, 4, 0, 1),
    (4, 3, 1, 2, 0),
)


def _names(n: int) -> tuple[str, ...]:
    return tuple("eabcd"[:n])


@pytest.mark.parametrize("table, message", [
    (LEFT_IDENTITY_ONLY, "element 0 must be the identity"),  # the refusal names the axiom that fails
    (RIGHT_IDENTITY_ONLY, "element 0 must be the identity"),
    (ONE_SIDED_INVERSE, "inverse|associative"),
    (NON_ASSOCIATIVE_LOOP, "associative"),
])
def test_a_table_wrong_on_one_side_only_is_not_a_group(table, message):
    with pytest.raises(GroupSpecError, match=message):
        FiniteGroup("bad", _names(len(table)), table)


def test_the_hand_tables_are_what_they_claim():
    # The tables above fail exactly the axiom they are meant to fail (so the refusals test that axiom).
    assert LEFT_IDENTITY_ONLY[0] == (0, 1) and LEFT_IDENTITY_ONLY[1][0] != 1
    assert all(row[0] == i for i, row in enumerate(RIGHT_IDENTITY_ONLY)) and RIGHT_IDENTITY_ONLY[0][1] != 1
    t = ONE_SIDED_INVERSE
    assert t[1][2] == 0 and t[2][1] != 0 and all(t[0][b] == b == t[b][0] for b in range(3))
    t = NON_ASSOCIATIVE_LOOP
    assert all(sorted(row) == list(range(5)) for row in t) and all(sorted(col) == list(range(5)) for col in zip(*t, strict=True))
    assert all(t[a][a] == 0 for a in range(5))
    assert t[t[1][1]][2] == 2 and t[1][t[1][2]] == 4


def test_a_true_group_given_by_hand_is_accepted_with_its_inverses():
    # S3 = symmetries of a triangle, elements e, r, r2, s, sr, sr2 with s r = r^-1 s (non-abelian).
    perms = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2)]
    compose = {(i, j): perms.index(tuple(perms[i][perms[j][k]] for k in range(3))) for i in range(6) for j in range(6)}
    table = tuple(tuple(compose[i, j] for j in range(6)) for i in range(6))
    group = FiniteGroup("s3", ("e", "r", "r2", "s", "sr", "sr2"), table)
    assert group.inverses == (0, 2, 1, 3, 4, 5)
    for a, b, c in itertools.product(range(6), repeat=3):
        assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))


# --------------------------------------------------------------------------------- actions, by hand
def test_image_elements_act_as_named_on_a_hand_image():
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    d4 = image_action("d4")
    expected = {
        "identity": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        "rot90": [[3, 6, 9], [2, 5, 8], [1, 4, 7]],  # counter-clockwise quarter turn
        "rot180": [[9, 8, 7], [6, 5, 4], [3, 2, 1]],
        "rot270": [[7, 4, 1], [8, 5, 2], [9, 6, 3]],
        "hflip": [[3, 2, 1], [6, 5, 4], [9, 8, 7]],  # mirror left-right
        "vflip": [[7, 8, 9], [4, 5, 6], [1, 2, 3]],  # mirror top-bottom
        "rot90_after_hflip": [[1, 4, 7], [2, 5, 8], [3, 6, 9]],  # transpose
        "rot270_after_hflip": [[9, 6, 3], [8, 5, 2], [7, 4, 1]],  # anti-transpose
    }
    assert sorted(d4.group.element_names) == sorted(expected)
    for g, name in enumerate(d4.group.element_names):
        assert d4.apply(x, g).tolist() == expected[name], name
    for group, name in (("hflip", "hflip"), ("vflip", "vflip")):
        action = image_action(group)
        assert action.group.element_names == ("identity", name)
        assert action.apply(x, 1).tolist() == expected[name]


def test_word_cycle_moves_each_word_to_the_next_one():
    vocab = ["<pad>", "walk", "look", "run", "jump", "twice"]
    perms = WordCycles([["walk", "look", "run", "jump"]]).bind(vocab).permutations
    # element k sends each word k places along walk -> look -> run -> jump -> walk; other words stay.
    assert perms.tolist() == [
        [0, 1, 2, 3, 4, 5],
        [0, 2, 3, 4, 1, 5],
        [0, 3, 4, 1, 2, 5],
        [0, 4, 1, 2, 3, 5],
    ]


def test_score_action_moves_the_score_of_a_word_to_its_image():
    vocab = ["a", "b", "c", "z"]
    scores = WordCycles([["a", "b", "c"]]).bind(vocab).on_scores
    y = torch.tensor([1.0, 2.0, 3.0, 9.0])  # scores of a, b, c, z
    # g = 1 sends a -> b -> c -> a: the score of a moves to b, of b to c, of c to a.
    assert scores.apply(y, 1).tolist() == [3.0, 1.0, 2.0, 9.0]
    assert scores.apply(y, 2).tolist() == [2.0, 3.0, 1.0, 9.0]
    # untransform_all maps row g back by g^-1: row 1 by the element sending a -> c.
    rows = torch.stack([y, y, y])
    assert scores.untransform_all(rows).tolist() == [[1.0, 2.0, 3.0, 9.0], [2.0, 3.0, 1.0, 9.0],
                                                     [3.0, 1.0, 2.0, 9.0]]


# --------------------------------------------------------------------------------------- equizero
class _Constant(nn.Module):
    """A backbone that ignores its input's content: it returns a given row per group element."""

    def __init__(self, per_element: torch.Tensor):
        super().__init__()
        self.per_element = per_element  # [|G|, K]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_element.repeat_interleave(x.shape[0] // self.per_element.shape[0], dim=0)


@pytest.mark.parametrize("proxy", ["entropy", "max_prob", "max_log_prob"])
def test_equizero_ties_go_to_the_lowest_element_index(proxy):
    c4 = image_action("c4")
    # elements 1 and 2 are equally (and most) confident: 1 must win; element 3 is less, element 0 least confident.
    logits = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [1.0, 0.0]], dtype=torch.float64)
    outputs = logits.unsqueeze(1)  # [|G|, B=1, K]
    model = EquiZero(_Constant(logits), c4, proxy=proxy)
    chosen, selected = model.select(outputs)
    assert chosen.tolist() == [1]
    assert selected.tolist() == [[5.0, 0.0]]


def test_proxies_on_hand_numbers():
    scores = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)  # probabilities 1/4, 3/4
    assert max_prob(scores).item() == pytest.approx(-0.75, abs=1e-15)
    assert max_log_prob(scores).item() == pytest.approx(-math.log(0.75), abs=1e-15)
    assert entropy(scores).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-15)
    masked = torch.tensor([0.0, float("-inf")], dtype=torch.float64)
    assert entropy(masked).item() == 0.0


def test_masked_proxy_mean_counts_the_kept_positions_only():
    per_position = torch.tensor([[[1.0, 2.0, 3.0, 100.0], [4.0, 4.0, 4.0, 4.0]],
                                 [[0.0, 6.0, 50.0, 50.0], [1.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)  # [2, 2, 4]
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])  # [B, T]
    assert torch.allclose(example_scores(per_position, mask), torch.tensor([[2.0, 4.0], [56 / 3, 1.0]], dtype=torch.float64))
    # a per-element mask [|G|, B, T]: each copy's own kept positions (different counts per copy)
    own = torch.tensor([[[True, True, False, False], [True, True, True, True]],
                        [[True, True, True, False], [True, False, False, False]]])
    assert torch.allclose(example_scores(per_position, own), torch.tensor([[1.5, 4.0], [56 / 3, 1.0]], dtype=torch.float64))


# ---------------------------------------------------------------------------------- lambda-equitune
def test_lambda_weights_are_normalised_over_the_group_for_each_example():
    hflip = image_action("hflip")
    # images [B=2, 1, 1, 2]; lambda reads the left pixel: element 0 sees x[..., 0], the mirror sees x[..., 1].
    x = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 3.0]]]], dtype=torch.float64)

    class LeftPixel(nn.Module):
        def forward(self, images):
            return images[:, 0, 0, 0]

    model = LambdaEquiTune(nn.Flatten(), LeftPixel(), hflip)
    outputs, weights = model.outputs_and_weights(x)
    for b, (left, right) in enumerate([(0.5, -1.0), (2.0, 3.0)]):
        s_identity, s_mirror = math.log1p(math.exp(left)) + 1e-6, math.log1p(math.exp(right)) + 1e-6
        total = s_identity + s_mirror
        assert weights[:, b].tolist() == pytest.approx([s_identity / total, s_mirror / total], abs=1e-12)
    expected = (weights[0, :, None] * x.flatten(1) + weights[1, :, None] * x.flip(-1).flatten(1))
    assert torch.allclose(model(x), expected, atol=1e-14)
