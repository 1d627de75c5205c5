"""Groups as values: axioms, actions as homomorphisms, element names, batched ops, and spec/vocabulary errors.

Everything is exact (permutations of entries), so tensors are compared with ``torch.equal``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from equitune.core.groups import (
    IMAGE_GROUPS,
    FiniteGroup,
    GroupSpecError,
    ImageAction,
    WordCycles,
    image_action,
    parse_group_spec,
)
from helpers.word_groups import INPUT_VOCAB, OUTPUT_VOCAB, WORD_SPECS

WORD_ORDERS = {"swap": 2, "3cycle": 3, "4cycle": 4, "two_swaps": 2, "two_3cycles": 3}
IMAGE_ORDERS = {"trivial": 1, "hflip": 2, "vflip": 2, "c4": 4, "d4": 8}


def word_groups(spec_name: str):
    return parse_group_spec(WORD_SPECS[spec_name])


def all_groups() -> dict[str, FiniteGroup]:
    groups = {name: image_action(name).group for name in IMAGE_GROUPS}
    groups.update({name: word_groups(name).group for name in WORD_SPECS})
    return groups


def all_actions() -> dict[str, tuple]:
    """name -> (action, a sample tensor it acts on)."""
    gen = torch.Generator().manual_seed(0)
    actions = {}
    for name in IMAGE_GROUPS:
        actions[f"image-{name}"] = (image_action(name), torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64))
    for name in WORD_SPECS:
        cycles = word_groups(name)
        ids = torch.randint(len(INPUT_VOCAB), (3, 7), generator=gen)
        scores = torch.randn(3, 7, len(OUTPUT_VOCAB), generator=gen, dtype=torch.float64)
        actions[f"ids-{name}"] = (cycles.bind(INPUT_VOCAB).on_ids, ids)
        actions[f"scores-{name}"] = (cycles.bind_output(OUTPUT_VOCAB).on_scores, scores)
    return actions


GROUPS = all_groups()
ACTIONS = all_actions()


# ------------------------------------------------------------------------------------------------ axioms
@pytest.mark.parametrize("name", GROUPS)
def test_group_axioms(name):
    group = GROUPS[name]
    elements = list(group)
    assert elements == list(range(group.order))
    assert len(set(group.element_names)) == group.order, "element names must be distinct"
    for a, b in itertools.product(elements, repeat=2):
        assert group.compose(a, b) in elements, "closure"
    for a in elements:
        assert group.compose(group.identity, a) == a == group.compose(a, group.identity), "identity"
        assert group.compose(a, group.inverse(a)) == group.identity == group.compose(group.inverse(a), a), "inverse"
    for a, b, c in itertools.product(elements, repeat=3):
        assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c)), "associativity"


@pytest.mark.parametrize("name", GROUPS)
def test_group_orders(name):
    expected = {**IMAGE_ORDERS, **WORD_ORDERS}[name]
    assert GROUPS[name].order == expected == len(GROUPS[name])


def test_d4_is_not_abelian_and_c4_is():
    d4 = GROUPS["d4"]
    assert any(d4.compose(a, b) != d4.compose(b, a) for a, b in itertools.product(d4, repeat=2))
    c4 = GROUPS["c4"]
    assert all(c4.compose(a, b) == c4.compose(b, a) for a, b in itertools.product(c4, repeat=2))


@pytest.mark.parametrize("name", ["3cycle", "4cycle", "two_3cycles"])
def test_word_cycles_of_order_above_two_have_elements_that_are_not_their_own_inverse(name):
    # Applying g where g^-1 is due goes unnoticed for order-2 groups only; these groups must expose it.
    group = GROUPS[name]
    assert any(group.inverse(g) != g for g in group)


def test_finite_group_rejects_a_table_that_is_not_a_group():
    with pytest.raises(GroupSpecError, match="identity"):
        FiniteGroup("bad", ("e", "a"), ((1, 0), (0, 1)))
    with pytest.raises(GroupSpecError, match="2x2"):
        FiniteGroup("bad", ("e", "a"), ((0, 1),))
    with pytest.raises(GroupSpecError, match="not an element"):
        FiniteGroup("bad", ("e", "a"), ((0, 1), (1, 2)))
    with pytest.raises(GroupSpecError, match="inverse"):
        FiniteGroup("bad", ("e", "a", "b"), ((0, 1, 2), (1, 1, 1), (2, 1, 0)))


# ------------------------------------------------------------------------------- actions are homomorphisms
@pytest.mark.parametrize("name", ACTIONS)
def test_action_is_a_homomorphism(name):
    action, x = ACTIONS[name]
    group = action.group
    assert torch.equal(action.apply(x, group.identity), x)
    for g, h in itertools.product(group, repeat=2):
        assert torch.equal(action.apply(action.apply(x, h), g), action.apply(x, group.compose(g, h))), (g, h)


@pytest.mark.parametrize("name", ACTIONS)
def test_non_identity_elements_move_the_sample(name):
    # Guards the homomorphism test above against an action that does nothing at all.
    action, x = ACTIONS[name]
    for g in list(action.group)[1:]:
        assert not torch.equal(action.apply(x, g), x), action.group.element_names[g]


@pytest.mark.parametrize("name", ACTIONS)
def test_transform_all_and_untransform_all_agree_with_apply(name):
    action, x = ACTIONS[name]
    group = action.group
    stacked = action.transform_all(x)
    assert stacked.shape == (group.order, *x.shape)
    for g in group:
        assert torch.equal(stacked[g], action.apply(x, g))
    rows = torch.stack([action.apply(x, g) for g in group])  # any stacked tensor with distinct rows
    back = action.untransform_all(rows)
    for g in group:
        assert torch.equal(back[g], action.apply(rows[g], group.inverse(g)))
    assert torch.equal(action.untransform_all(action.transform_all(x)), x.expand(group.order, *x.shape))


@pytest.mark.parametrize("name", ACTIONS)
def test_untransform_all_rejects_a_wrong_group_axis(name):
    action, x = ACTIONS[name]
    wrong = x.unsqueeze(0).expand(action.group.order + 1, *x.shape)
    with pytest.raises(ValueError, match="group axis"):
        action.untransform_all(wrong)


# ---------------------------------------------------------------------------- named image elements
IMAGE_2x3 = torch.tensor([[1, 2, 3], [4, 5, 6]])
IMAGE_3x3 = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])


def element(action: ImageAction, name: str) -> int:
    return action.group.element_names.index(name)


def test_hflip_mirrors_left_right_and_is_not_a_half_turn():
    hflip = image_action("hflip")
    mirrored = hflip.apply(IMAGE_2x3, element(hflip, "hflip"))
    assert torch.equal(mirrored, torch.tensor([[3, 2, 1], [6, 5, 4]]))
    half_turn = torch.tensor([[6, 5, 4], [3, 2, 1]])
    assert not torch.equal(mirrored, half_turn)


def test_vflip_mirrors_top_bottom():
    vflip = image_action("vflip")
    assert torch.equal(vflip.apply(IMAGE_2x3, element(vflip, "vflip")), torch.tensor([[4, 5, 6], [1, 2, 3]]))


def test_rot90_is_a_quarter_turn_counter_clockwise():
    c4 = image_action("c4")
    quarter = c4.apply(IMAGE_3x3, element(c4, "rot90"))
    # The top row (1 2 3) becomes the left column read bottom to top: a counter-clockwise quarter turn.
    assert torch.equal(quarter, torch.tensor([[3, 6, 9], [2, 5, 8], [1, 4, 7]]))
    assert torch.equal(c4.apply(IMAGE_3x3, element(c4, "rot180")), torch.tensor([[9, 8, 7], [6, 5, 4], [3, 2, 1]]))
    assert torch.equal(c4.apply(IMAGE_3x3, element(c4, "rot270")), torch.tensor([[7, 4, 1], [8, 5, 2], [9, 6, 3]]))


def test_every_d4_element_does_what_its_name_says():
    d4 = image_action("d4")
    x = IMAGE_3x3

    def turn(image, quarters):
        return torch.rot90(image, quarters, dims=(-2, -1))

    def mirror(image):
        return torch.flip(image, dims=(-1,))

    expected = {
        "identity": x,
        "rot90": turn(x, 1),
        "rot180": turn(x, 2),
        "rot270": turn(x, 3),
        "hflip": torch.tensor([[3, 2, 1], [6, 5, 4], [9, 8, 7]]),
        "vflip": torch.tensor([[7, 8, 9], [4, 5, 6], [1, 2, 3]]),
        "rot90_after_hflip": turn(mirror(x), 1),  # the main-diagonal transpose
        "rot270_after_hflip": turn(mirror(x), 3),  # the anti-diagonal transpose
    }
    assert set(d4.group.element_names) == set(expected)
    assert torch.equal(expected["rot90_after_hflip"], x.T)
    for name, image in expected.items():
        assert torch.equal(d4.apply(x, element(d4, name)), image), name
    images = [d4.apply(x, g) for g in d4.group]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(images, 2)), "8 distinct images"


@pytest.mark.parametrize("name", IMAGE_GROUPS)
def test_image_subgroups_share_d4_element_names(name):
    d4_names = set(GROUPS["d4"].element_names)
    assert set(GROUPS[name].element_names) <= d4_names


def test_image_action_acts_on_the_last_two_axes_only():
    c4 = image_action("c4")
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    turned = c4.apply(x, 1)
    for b, c in itertools.product(range(2), range(3)):
        assert torch.equal(turned[b, c], torch.rot90(x[b, c], 1))


# --------------------------------------------------------------------------------- word permutations
def test_token_ids_move_along_the_cycle():
    ids_action = parse_group_spec(WORD_SPECS["4cycle"]).bind(INPUT_VOCAB).on_ids
    sentence = torch.tensor([[INPUT_VOCAB.index(w) for w in "walk and run twice jump look".split()]])
    expected = {
        1: "look and jump twice walk run",
        2: "run and walk twice look jump",
        3: "jump and look twice run walk",
    }
    for g, text in expected.items():
        moved = ids_action.apply(sentence, g)
        assert [INPUT_VOCAB[i] for i in moved[0].tolist()] == text.split(), g


def test_several_sets_shift_together():
    ids_action = parse_group_spec(WORD_SPECS["two_swaps"]).bind(INPUT_VOCAB).on_ids
    sentence = torch.tensor([INPUT_VOCAB.index(w) for w in "man and he walk she woman".split()])
    moved = ids_action.apply(sentence, 1)
    assert [INPUT_VOCAB[i] for i in moved.tolist()] == "woman and she walk he man".split()


@pytest.mark.parametrize("name", WORD_SPECS)
def test_scores_move_with_the_words(name):
    # A model that puts all its score on the word it read is equivariant exactly when scores move with words.
    cycles = parse_group_spec(WORD_SPECS[name])
    ids_action = cycles.bind(INPUT_VOCAB).on_ids
    out = cycles.bind_output(OUTPUT_VOCAB)
    out_ids, out_scores = out.on_ids, out.on_scores
    ids = torch.arange(len(OUTPUT_VOCAB))

    def one_hot(t):
        return torch.nn.functional.one_hot(t, len(OUTPUT_VOCAB)).double()

    for g in cycles.group:
        assert torch.equal(out_scores.apply(one_hot(ids), g), one_hot(out_ids.apply(ids, g)))
    # Input and output bindings are the same abstract group.
    assert ids_action.group.table == out_scores.group.table


def test_output_cycles_default_to_the_input_cycles():
    cycles = WordCycles([["jump", "run"]])
    ids = torch.tensor([INPUT_VOCAB.index("jump"), INPUT_VOCAB.index("walk")])
    expected = cycles.bind(INPUT_VOCAB).on_ids.apply(ids, 1)
    assert torch.equal(cycles.bind_output(INPUT_VOCAB).on_ids.apply(ids, 1), expected)


def test_bind_accepts_a_word_to_id_mapping():
    mapping = {word: i for i, word in enumerate(INPUT_VOCAB)}
    cycles = WordCycles([["walk", "look", "run"]])
    assert torch.equal(cycles.bind(mapping).permutations, cycles.bind(INPUT_VOCAB).permutations)
    assert cycles.bind(mapping).permutations.shape == (3, len(INPUT_VOCAB))


def test_bind_to_a_padded_logits_axis():
    # Language models often have more logits than tokenizer entries; the extra ids are left where they are.
    scores_action = WordCycles([["jump", "run"]]).bind_output(INPUT_VOCAB, vocab_size=16).on_scores
    y = torch.arange(16.0)
    moved = scores_action.apply(y, 1)
    jump, run = INPUT_VOCAB.index("jump"), INPUT_VOCAB.index("run")
    assert moved[jump] == y[run] and moved[run] == y[jump]
    assert torch.equal(moved[len(INPUT_VOCAB):], y[len(INPUT_VOCAB):])
    with pytest.raises(GroupSpecError, match=r"vocab_size=5 is smaller than the vocabulary's largest id \+ 1 \(13\)"):
        WordCycles([["jump", "run"]]).bind(INPUT_VOCAB, vocab_size=5)


def test_parse_group_spec_builds_image_and_word_groups():
    assert isinstance(parse_group_spec("d4"), ImageAction)
    assert parse_group_spec("d4").group.order == 8
    cycles = parse_group_spec({"cycles": [["jump", "run"]]})
    assert isinstance(cycles, WordCycles) and cycles.output_cycles is None


# -------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("spec", ["c5", "C4", "rot90", ""])
def test_unknown_group_name_lists_the_allowed_ones(spec):
    with pytest.raises(GroupSpecError, match=rf"unknown group '{spec}'.*c4.*d4.*cycles"):
        parse_group_spec(spec)


def test_group_spec_with_a_misspelt_key_names_it():
    with pytest.raises(GroupSpecError, match=r"unknown key.*'cycle'.*allowed.*cycles.*output_cycles"):
        parse_group_spec({"cycle": [["jump", "run"]]})
    with pytest.raises(GroupSpecError, match=r"unknown key.*'output_cycle'"):
        parse_group_spec({"cycles": [["jump", "run"]], "output_cycle": [["JUMP", "RUN"]]})
    with pytest.raises(GroupSpecError, match=r"missing.*'cycles'"):
        parse_group_spec({"output_cycles": [["JUMP", "RUN"]]})


@pytest.mark.parametrize("spec", [3, None, ["jump", "run"]])
def test_group_spec_of_the_wrong_type(spec):
    with pytest.raises(GroupSpecError, match="not understood"):
        parse_group_spec(spec)


@pytest.mark.parametrize("cycles, message", [
    ([], "non-empty list"),
    ("jump run", "non-empty list"),
    ([["jump"]], "at least two words"),
    ([["jump", 3]], "at least two words"),
    ([["jump", "run"], ["run", "walk"]], r"'run' appears twice \(in set 0 and set 1\)"),
    ([["jump", "jump"]], r"'jump' appears twice"),
    ([["jump", "run"], ["walk", "look", "left"]], r"same size.*\[2, 3\]"),
])
def test_malformed_cycles(cycles, message):
    with pytest.raises(GroupSpecError, match=message):
        WordCycles(cycles)


def test_output_cycles_must_match_the_input_cycle_size():
    with pytest.raises(GroupSpecError, match="output_cycles.*same size"):
        WordCycles([["jump", "run"]], [["JUMP", "RUN", "WALK"]])


def test_word_not_in_the_vocabulary():
    with pytest.raises(GroupSpecError, match=r"cycles: word\(s\) \['sprint'\] not in the vocabulary"):
        WordCycles([["jump", "sprint"]]).bind(INPUT_VOCAB)
    with pytest.raises(GroupSpecError, match=r"output_cycles: word\(s\) \['SPRINT'\] not in the vocabulary"):
        WordCycles([["jump", "run"]], [["JUMP", "SPRINT"]]).bind_output(OUTPUT_VOCAB)
    # Without output_cycles the input words are looked up in the output vocabulary: say so.
    with pytest.raises(GroupSpecError, match=r"output_cycles \(none given, so the input cycles\).*\['jump', 'run'\]"):
        WordCycles([["jump", "run"]]).bind_output(OUTPUT_VOCAB)


def test_vocabulary_with_a_repeated_word_or_shared_id_is_rejected():
    with pytest.raises(GroupSpecError, match="'run' appears more than once in the vocabulary"):
        WordCycles([["jump", "run"]]).bind(["jump", "run", "run"])
    with pytest.raises(GroupSpecError, match="share the token id 1"):
        WordCycles([["jump", "run"]]).bind({"jump": 1, "run": 1, "walk": 0})


def test_token_id_outside_the_vocabulary():
    ids_action = WordCycles([["jump", "run"]]).bind(INPUT_VOCAB).on_ids
    for bad in (len(INPUT_VOCAB), -1):
        with pytest.raises(ValueError, match=rf"token id out of range.*{len(INPUT_VOCAB)} entries"):
            ids_action.apply(torch.tensor([0, bad]), 1)
        with pytest.raises(ValueError, match="token id out of range"):
            ids_action.transform_all(torch.tensor([[bad]]))
    with pytest.raises(TypeError, match="integer tensor"):
        ids_action.apply(torch.tensor([0.0, 1.0]), 1)


def test_scores_with_the_wrong_vocabulary_size():
    scores_action = WordCycles([["jump", "run"]], [["JUMP", "RUN"]]).bind_output(OUTPUT_VOCAB).on_scores
    with pytest.raises(ValueError, match=rf"vocabulary\) axis of size {len(OUTPUT_VOCAB)}"):
        scores_action.apply(torch.zeros(2, len(OUTPUT_VOCAB) + 1), 1)


@pytest.mark.parametrize("name", ["c4", "d4"])
def test_rotation_group_on_a_non_square_image(name):
    with pytest.raises(ValueError, match=r"square images; got H=4, W=5"):
        image_action(name).apply(torch.zeros(1, 3, 4, 5), 1)
    with pytest.raises(ValueError, match="square"):
        image_action(name).transform_all(torch.zeros(1, 3, 4, 5))


@pytest.mark.parametrize("name", ["trivial", "hflip", "vflip"])
def test_mirror_groups_accept_non_square_images(name):
    assert image_action(name).transform_all(torch.zeros(1, 3, 4, 5)).shape == (IMAGE_ORDERS[name], 1, 3, 4, 5)


def test_unknown_image_group():
    with pytest.raises(GroupSpecError, match="unknown image group 'c8'; allowed: trivial, hflip, vflip, c4, d4"):
        image_action("c8")


def test_image_action_needs_two_spatial_axes():
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        image_action("hflip").apply(torch.zeros(5), 1)
