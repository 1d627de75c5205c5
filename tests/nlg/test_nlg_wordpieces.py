"""The rule that says when the group's token swap acts on a piece of a longer word, on hand-made token sequences."""

from __future__ import annotations

import torch

from equitune.nlg.wordpieces import WordPieceCount, word_character_masks

# id: text. 1 and 2 are the equality tokens " man" and "man" (the no-space form).
TEXTS = [" The", " man", "man", "ish", " Gentle", ".", " was", "'s", "\n", "", " 9", "9"]
EQUALITY = torch.zeros(len(TEXTS), dtype=torch.bool)
EQUALITY[[1, 2]] = True
STARTS, ENDS = word_character_masks(TEXTS)


def counted(*sequences):
    """The count over whole sequences (each from its first token)."""
    count = WordPieceCount()
    for tokens in sequences:
        count.add(tokens, EQUALITY, STARTS, ENDS)
    return count.as_metrics()


def test_the_token_texts_give_the_word_character_masks():
    assert STARTS.tolist() == [False, False, True, True, False, False, False, False, False, False, False, True]
    assert ENDS.tolist() == [True, True, True, True, True, False, True, True, False, False, True, True]


def test_whole_words_are_not_counted():
    # " The man was", " The man.", " The man's", " The man" at the end, " The man" + newline
    assert counted([0, 1, 6], [0, 1, 5], [0, 1, 7], [0, 1], [0, 1, 8]) == {
        "equality_tokens": 5, "inside_words": 0, "inside_word_rate": 0.0}


def test_a_token_followed_by_a_continuation_is_inside_a_word():
    # " man" + "ish" = " mannish"; " man" + "9" = " man9"; " man" + " 9" is two words
    assert counted([0, 1, 3, 6], [1, 11], [1, 10]) == {"equality_tokens": 3, "inside_words": 2,
                                                       "inside_word_rate": 2 / 3}


def test_a_no_space_token_after_a_word_is_inside_it():
    # " Gentle" + "man" = " Gentleman"; "." + "man": a new word; "man" first in the sequence: a word of its own
    assert counted([4, 2, 6], [5, 2, 6], [2, 6]) == {"equality_tokens": 3, "inside_words": 1,
                                                     "inside_word_rate": 1 / 3}
    # Both reasons at once count once: " Gentle" + "man" + "ish".
    assert counted([4, 2, 3]) == {"equality_tokens": 1, "inside_words": 1, "inside_word_rate": 1.0}


def test_counting_from_a_position_keeps_the_left_context_and_no_occurrence_gives_no_rate():
    count = WordPieceCount()
    count.add([0, 1, 6, 4, 2], EQUALITY, STARTS, ENDS, first=3)  # the prompt " The man was" is not counted
    assert count.as_metrics() == {"equality_tokens": 1, "inside_words": 1, "inside_word_rate": 1.0}
    count = WordPieceCount()
    count.add([4, 2, 6], EQUALITY, STARTS, ENDS, first=1)  # " Gentle" is context: "man" continues it
    assert count.as_metrics()["inside_words"] == 1
    assert counted([0, 6]) == {"equality_tokens": 0, "inside_words": 0, "inside_word_rate": None}
