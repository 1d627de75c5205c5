"""Word lists -> token ids: the single-token rule, and bad lists rejected with clear errors."""

from __future__ import annotations

import string

import pytest
import torch

from equitune.nlg.prompts import Prompt, check_prompts_are_group_images
from equitune.nlg.words import AxisWords, WordListError, bind_axis, load_word_lists, word_forms
from helpers.nlg_tiny import WordTokenizer

WORDS = [" man", " woman", "man", "woman", " Man", " Woman", "Man", " he", " she", " his", "his", " her",
         " boy", " girl", " doctor", "doctor", " The", "The", " was", " known", " for"]
TOKENIZER = WordTokenizer(list(string.ascii_letters + " .,-") + WORDS)


def lists(**axis):
    return {"gender": {"equality": [["man", "woman"]], "general": ["he", "she"], "neutral": ["doctor"], **axis}}


def test_forms_and_the_single_token_rule():
    assert word_forms("man") == [" man", "man", " Man", "Man"]
    assert word_forms("Black") == [" Black", "Black"]
    words = bind_axis(lists(), "gender", TOKENIZER)
    ids = TOKENIZER.ids
    # " man", "man" and " Man" are one token for both words; "Man" is one token but "Woman" is not -> left out.
    assert words.equality_cycles == ((ids[" man"], ids[" woman"]), (ids["man"], ids["woman"]), (ids[" Man"], ids[" Woman"]))
    assert any("form 3" in s and "'Woman'" in s for s in words.skipped_forms)
    assert words.general_ids == (ids[" he"], ids[" she"])
    assert set(words.neutral_ids) == {ids[" doctor"], ids["doctor"]}
    # Every form not used is reported (nothing silently dropped): e.g. "he" without the space.
    assert any("'he'" in s for s in words.skipped_forms)
    assert AxisWords.from_json("gender", words.to_json()) == words


def test_permutation_swaps_every_form_and_nothing_else():
    words = bind_axis(lists(), "gender", TOKENIZER)
    perm = words.permutation(len(TOKENIZER)).permutations
    ids = TOKENIZER.ids
    for a, b in [(" man", " woman"), ("man", "woman"), (" Man", " Woman")]:
        assert perm[1, ids[a]] == ids[b] and perm[1, ids[b]] == ids[a]
    moved = (perm[1] != torch.arange(len(TOKENIZER))).sum()
    assert int(moved) == 6


@pytest.mark.parametrize("bad, message", [
    (dict(equality=[["man", "woman"], ["boy", "girl", "he"]]), "same size"),
    (dict(equality=[["man", "woman"], ["boy", "man"]]), "appears twice"),
    (dict(general=["he", "Man"]), "appears twice"),  # case-insensitive: "Man" is a form of "man"
    (dict(neutral=["doctor", "she"]), "appears twice"),
    (dict(equality=[["man", "woman"], ["boy", "gays"]]), "not a single token"),
    (dict(general=["he", "xylophone"]), "not a single token"),
    (dict(equality=[["man"]]), "at least two words"),
    (dict(equality=[]), "at least one word set"),
    (dict(equality=[["man", " woman"]]), "not a word"),
    (dict(extra=["x"]), "unknown key"),
])
def test_bad_word_lists_are_rejected_with_clear_errors(bad, message):
    with pytest.raises(WordListError, match=message):
        bind_axis(lists(**bad), "gender", TOKENIZER)


def test_unknown_axis_and_missing_file():
    with pytest.raises(WordListError, match="no axis 'race'"):
        bind_axis(lists(), "race", TOKENIZER)
    with pytest.raises(WordListError, match="not found"):
        load_word_lists("/nonexistent/words.yaml")


def test_shipped_word_lists_are_well_formed():
    data = load_word_lists("default")
    assert set(data) >= {"gender", "race", "orientation"}
    assert ["man", "woman"] in data["gender"]["equality"]
    assert "he" in data["gender"]["general"]


def test_prompts_must_be_group_images_of_each_other():
    words = bind_axis(lists(), "gender", TOKENIZER)
    perm = words.permutation(len(TOKENIZER))
    good = [Prompt("gender", "respect", 0, "was known for", d, f"The {w}", f"The {w} was known for")
            for d, w in enumerate(["man", "woman"])]
    check_prompts_are_group_images(good, [TOKENIZER.encode(p.text) for p in good], perm, TOKENIZER)
    # "The boy" is not the image of "The man" under this group (boy/girl are not equality words here).
    bad = [good[0], Prompt("gender", "respect", 0, "was known for", 1, "The boy", "The boy was known for")]
    with pytest.raises(WordListError, match="group maps"):
        check_prompts_are_group_images(bad, [TOKENIZER.encode(p.text) for p in bad], perm, TOKENIZER)


def test_a_multi_token_equality_pair_is_refused_naming_the_word_its_pieces_and_the_fix():
    # " gentleman" is not in the tiny vocabulary: the tokenizer splits it into letters and the form "man".
    with pytest.raises(WordListError) as error:
        bind_axis(lists(equality=[["man", "woman"], ["gentleman", "lady"]]), "gender", TOKENIZER)
    message = str(error.value)
    assert "equality[1]" in message and "'gentleman'" in message
    assert str([" ", "g", "e", "n", "t", "l", "e", "man"]) in message  # its tokens, piece by piece
    assert "remove the word (and its partners) or choose another" in message


def test_the_form_table_says_which_forms_are_one_token():
    from equitune.nlg.words import equality_form_table, form_table_markdown

    rows = equality_form_table(lists(equality=[["man", "woman"], ["boy", "girl"]]), ["gender"], TOKENIZER)
    assert [(r["axis"], r["word"]) for r in rows] == [("gender", w) for w in ("man", "woman", "boy", "girl")]
    woman = rows[1]
    assert woman["single"] == {" woman": True, "woman": True, " Woman": True, "Woman": False}
    assert woman["forms"]["Woman"] == ["W", "o", "man"]
    assert rows[2]["single"] == {" boy": True, "boy": False, " Boy": False, "Boy": False}
    table = form_table_markdown(rows).splitlines()
    assert table[3] == "| gender | woman | 1 token | 1 token | 1 token | 'W' + 'o' + 'man' |"
