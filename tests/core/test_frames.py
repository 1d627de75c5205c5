"""Frames and canonicalization are exactly equivariant, in float64, for C4, D4 and word groups of order 2, 3 and 4,
including inputs fixed by an element (tied frames) and empty frames; and they compute what they say by hand.

Equivariance is asserted with ``assert_equivariant`` (float64 tolerance); each raw backbone is first shown to be
not equivariant (``assert_not_equivariant``), so every equivariance test here could fail.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.frames import (
    Canonicalize,
    FrameAverage,
    OrbitScores,
    identity_prior_loss,
    lowest_score_frame,
    share_scores_of_identical_copies,
    support_frame,
)
from equitune.core.groups import image_action, parse_group_spec
from equitune.core.wrappers import EquiTune
from helpers.word_groups import INPUT_VOCAB, OUTPUT_VOCAB, WORD_SPECS

WORD_GROUPS = ["swap", "3cycle", "4cycle", "two_swaps"]  # orders 2, 3, 4 and 4 (Klein)
SEQ_LEN, CLASSES, SIZE = 6, 4, 6


def seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory().double()


def cnn_classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, CLASSES))


def cnn_features():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))


def image_scorer():
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * (SIZE - 2) ** 2, 1))


class GRUTagger(nn.Module):
    """``[B, T] -> [B, T, |output vocab|]`` per-position scores (position-aware, not equivariant)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(INPUT_VOCAB), 6)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.out = nn.Linear(8, len(OUTPUT_VOCAB))

    def forward(self, ids):
        return self.out(self.gru(self.embed(ids))[0])


class TokenScorer(nn.Module):
    """One score per sentence from its token ids (a canonicalizer for word groups)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(INPUT_VOCAB), 3)
        self.linear = nn.Linear(3 * SEQ_LEN, 1)

    def forward(self, ids):
        return self.linear(self.embed(ids).flatten(1))


def images(seed=0, batch=4):
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    corner = torch.zeros_like(x[-1])
    corner[:, :SIZE // 2, :SIZE // 2] = x[-1, :, :SIZE // 2, :SIZE // 2]
    # exactly C4-symmetric: each pixel is one corner value plus zeros, so the sum is exact in any order
    x[-1] = corner + corner.rot90(1, (-2, -1)) + corner.rot90(2, (-2, -1)) + corner.rot90(3, (-2, -1))
    return x


def word_actions(name):
    cycles = parse_group_spec(WORD_SPECS[name])
    return cycles.bind(INPUT_VOCAB).on_ids, cycles.bind_output(OUTPUT_VOCAB).on_scores


def sentences(name, seed=0):
    """Random sentences; the last two rows hold no group word (fixed by every element: the frame is all of G)."""
    gen = torch.Generator().manual_seed(seed)
    moved = {INPUT_VOCAB.index(w) for cycle in WORD_SPECS[name]["cycles"] for w in cycle}
    others = torch.tensor([i for i in range(1, len(INPUT_VOCAB)) if i not in moved])
    ids = torch.randint(len(INPUT_VOCAB), (6, SEQ_LEN), generator=gen)
    ids[-2:] = others[torch.randint(len(others), (2, SEQ_LEN), generator=gen)]
    return ids


def first_word_frame(action):
    """An equivariant frame of token ids that has size one for most inputs, several for ties and is empty for
    none: the elements that send the first moved word of the sentence to the cycle's first word."""
    perms = action.permutations
    moved = (perms != torch.arange(perms.shape[1])).any(dim=0)

    def rule(ids):
        order, batch = perms.shape[0], ids.shape[0]
        mask = torch.ones(order, batch, dtype=torch.bool)
        for b in range(batch):
            positions = moved[ids[b]].nonzero()
            if len(positions):
                word = int(ids[b, positions[0, 0]])
                orbit = perms[:, word]
                mask[:, b] = orbit == int(orbit.min())
        return mask

    return rule


# ------------------------------------------------------------------------------ exact equivariance, images
@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("seed", [0, 1])
def test_canonicalized_classifier_is_invariant_on_images(group, seed):
    action = image_action(group)
    backbone = seeded(cnn_classifier, seed)
    assert_not_equivariant(backbone, action, images(seed))
    model = Canonicalize(backbone, action, OrbitScores(seeded(image_scorer, seed + 10), action)).eval()
    assert_equivariant(model, action, images(seed))


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_canonicalized_feature_maps_are_equivariant(group):
    action = image_action(group)
    backbone = seeded(cnn_features)
    assert_not_equivariant(backbone, action, images(), action)
    model = Canonicalize(backbone, action, OrbitScores(seeded(image_scorer, 3), action), output_action=action).eval()
    assert_equivariant(model, action, images(), action)


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_a_symmetric_image_ties_and_its_frame_holds_the_whole_stabiliser(group):
    action = image_action(group)
    scores = OrbitScores(seeded(image_scorer, 5), action)
    frame = lowest_score_frame(scores(images()))
    assert frame[:, :-1].sum(dim=0).tolist() == [1, 1, 1]  # generic images: a canonical element, one backbone call
    assert bool(frame[:, -1].all()) if group == "c4" else int(frame[:, -1].sum()) == 4  # a coset of its stabiliser C4


# ---------------------------------------------------------------------------- exact equivariance, word groups
@pytest.mark.parametrize("name", WORD_GROUPS)
def test_frame_average_of_a_tagger_is_equivariant_on_word_groups(name):
    ids_action, score_action = word_actions(name)
    backbone = seeded(GRUTagger)
    assert_not_equivariant(backbone, ids_action, sentences(name), score_action)
    model = FrameAverage(backbone, ids_action, first_word_frame(ids_action), output_action=score_action).eval()
    assert_equivariant(model, ids_action, sentences(name), score_action)


@pytest.mark.parametrize("name", WORD_GROUPS)
def test_canonicalized_tagger_is_equivariant_on_word_groups(name):
    ids_action, score_action = word_actions(name)
    model = Canonicalize(seeded(GRUTagger), ids_action, OrbitScores(seeded(TokenScorer, 2), ids_action),
                         output_action=score_action).eval()
    assert_equivariant(model, ids_action, sentences(name), score_action)


@pytest.mark.parametrize("name", WORD_GROUPS)
def test_support_frame_average_is_equivariant_and_cheap(name):
    ids_action, score_action = word_actions(name)
    cycle_heads = {cycle[0] for cycle in WORD_SPECS[name]["cycles"]}
    moved = {w for cycle in WORD_SPECS[name]["cycles"] for w in cycle}
    allowed = [INPUT_VOCAB.index(w) for w in INPUT_VOCAB if w not in moved or w in cycle_heads]
    rule = support_frame(ids_action, allowed)
    ids = sentences(name)
    ids[:4] = torch.tensor([INPUT_VOCAB.index("and")])  # rows with exactly one group word: a frame of size one
    for row, cycle in zip(range(4), WORD_SPECS[name]["cycles"] * 4, strict=False):
        ids[row, row % SEQ_LEN] = INPUT_VOCAB.index(cycle[-1])
    mask = rule(ids)
    assert mask[:, :4].sum(dim=0).tolist() == [1, 1, 1, 1]
    assert mask[:, -2:].all()  # no group word: fixed by every element, so the whole group
    model = FrameAverage(seeded(GRUTagger), ids_action, rule, output_action=score_action).eval()
    assert_equivariant(model, ids_action, ids, score_action)


# ---------------------------------------------------------------------------------------- right answers
def test_frame_average_is_the_mean_over_the_frame_computed_by_hand():
    ids_action, score_action = word_actions("4cycle")
    backbone = seeded(GRUTagger).eval()
    ids = sentences("4cycle")
    mask = torch.zeros(4, ids.shape[0], dtype=torch.bool)
    mask[1, 0] = mask[3, 0] = True          # {1, 3} for example 0
    mask[2, 1:] = True                      # {2} for the others, except
    mask[:, 2] = False                      # an empty frame for example 2: the whole group
    model = FrameAverage(backbone, ids_action, lambda x: mask).eval()
    model.output_action = score_action
    out = model(ids)
    for b in range(ids.shape[0]):
        elements = [g for g in range(4) if mask[g, b]] or list(range(4))
        by_hand = sum(score_action.apply(backbone(ids_action.apply(ids[b:b + 1], g)), ids_action.group.inverse(g))
                      for g in elements) / len(elements)
        torch.testing.assert_close(out[b:b + 1], by_hand, rtol=0, atol=1e-12)


def test_the_whole_group_as_frame_is_equitune():
    action = image_action("d4")
    backbone = seeded(cnn_classifier)
    whole = FrameAverage(backbone, action, lambda x: torch.ones(8, x.shape[0], dtype=torch.bool))
    torch.testing.assert_close(whole(images()), EquiTune(backbone, action)(images()), rtol=0, atol=1e-12)


class CountingBackbone(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.inner(x)


def test_only_the_frame_copies_go_through_the_backbone_in_one_batch():
    action = image_action("d4")
    counting = CountingBackbone(seeded(cnn_classifier))
    model = Canonicalize(counting, action, OrbitScores(seeded(image_scorer), action)).eval()
    x = images(batch=5)
    frame = lowest_score_frame(model.scores(x))
    model(x)
    assert counting.rows == [int(frame.sum())]
    assert int(frame.sum()) == 4 + 4  # four generic images once; the C4-symmetric one (D4 stabiliser C4) four times


def test_canonicalize_picks_the_lowest_score_and_moves_the_output_back():
    action = image_action("c4")
    backbone = seeded(cnn_features).eval()
    x = images(batch=3)[:2]
    scores = torch.tensor([[3.0, 0.0], [1.0, 5.0], [0.5, 2.0], [2.0, 1.0]], dtype=torch.float64)
    model = Canonicalize(backbone, action, lambda _: scores, output_action=action).eval()
    out = model(x)
    for b, g in [(0, 2), (1, 0)]:
        expected = action.apply(backbone(action.apply(x[b:b + 1], g)), action.group.inverse(g))
        torch.testing.assert_close(out[b:b + 1], expected, rtol=0, atol=1e-12)


def test_identical_copies_share_the_first_copy_score_exactly():
    transformed = torch.tensor([[[1.0]], [[1.0]], [[2.0]], [[1.0]]])  # [|G|=4, B=1, 1]: copies 0, 1, 3 equal
    scores = torch.tensor([[0.3], [0.2], [0.1], [0.4]])
    assert share_scores_of_identical_copies(transformed, scores)[:, 0].tolist() == pytest.approx([0.3, 0.3, 0.1, 0.3])


def test_support_frame_by_hand_on_jump_run():
    ids_action, _ = word_actions("swap")
    vocab = {w: i for i, w in enumerate(INPUT_VOCAB)}
    rule = support_frame(ids_action, [i for w, i in vocab.items() if w != "jump"])
    ids = torch.tensor([[vocab["jump"], vocab["twice"]], [vocab["run"], vocab["left"]], [vocab["walk"], vocab["and"]],
                        [vocab["jump"], vocab["run"]]])
    # jump -> {swap}; run -> {identity}; neither -> both (fixed); both words -> empty, hence the whole group
    assert rule(ids).T.tolist() == [[False, True], [True, False], [True, True], [False, False]]
    model = FrameAverage(nn.Identity(), ids_action, rule)
    assert model.frame_mask(ids)[:, 3].tolist() == [True, True]


def test_training_canonicalization_is_one_backbone_call_with_the_scorer_gradient():
    action = image_action("c4")
    counting = CountingBackbone(seeded(cnn_classifier))
    scorer = OrbitScores(seeded(image_scorer), action)
    model = Canonicalize(counting, action, scorer).train()
    x = images(batch=3)[:2]
    out = model(x)
    assert counting.rows == [2]
    chosen = scorer(x).argmin(dim=0)
    expected = counting.inner(torch.stack([action.apply(x[b:b + 1], int(chosen[b]))[0] for b in range(2)]))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)  # forward value: the chosen copy
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())


def test_identity_prior_is_the_cross_entropy_towards_the_identity():
    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    by_hand = [-torch.log_softmax(-scores[:, b], dim=0)[0] for b in range(2)]
    torch.testing.assert_close(identity_prior_loss(scores), sum(by_hand) / 2, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- bad input
def test_bad_frames_and_scores_are_refused_with_what_was_wrong():
    ids_action, _ = word_actions("swap")
    vocab = {w: i for i, w in enumerate(INPUT_VOCAB)}
    with pytest.raises(ValueError, match="no image of any word the group moves"):
        support_frame(ids_action, [vocab["walk"]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        support_frame(ids_action, [len(INPUT_VOCAB)])
    with pytest.raises(ValueError, match=r"\[\|G\|, B\] = \[2, 2\]"):
        FrameAverage(nn.Identity(), ids_action, lambda x: torch.ones(3, 2, dtype=torch.bool))(torch.zeros(2, 3).long())
    with pytest.raises(ValueError, match="finite"):
        lowest_score_frame(torch.tensor([[float("nan")], [0.0]]))
    with pytest.raises(TypeError, match="frame must be a function"):
        FrameAverage(nn.Identity(), ids_action, "first")


def test_keyword_tensors_follow_their_examples_into_the_frame_copies():
    """A batched keyword tensor goes with each example to its frame's copies (one backbone call on the selected
    rows); an unbatched one is refused with its name and shape."""
    ids_action, scores_action = word_actions("3cycle")

    class ScaledScores(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(INPUT_VOCAB), len(OUTPUT_VOCAB)).double()

        def forward(self, ids, scale):
            return scale[:, None, None] * self.embed(ids)

    ids = sentences("3cycle")
    scale = torch.arange(1.0, ids.shape[0] + 1, dtype=torch.float64)
    model = FrameAverage(seeded(ScaledScores), ids_action, first_word_frame(ids_action), scores_action)
    together = model(ids, scale=scale)
    alone = torch.cat([model(ids[b:b + 1], scale=scale[b:b + 1]) for b in range(ids.shape[0])])
    torch.testing.assert_close(together, alone, rtol=0, atol=0)
    assert not torch.equal(together, model(ids, scale=torch.ones_like(scale)))
    with pytest.raises(ValueError, match=r"keyword tensor 'scale' must be batched.*leading axis 6.*\(3,\)"):
        model(ids, scale=scale[:3])
