"""Scoring: VADER sentiment labels and masking; the held-out text windows. (The label fractions and the bias gap
are computed by summarise: right answers in tests/nlg/test_nlg_report.py.)"""

from __future__ import annotations

import pytest

from equitune.core.errors import EquituneError
from equitune.nlg.perplexity import heldout_text, token_windows
from equitune.nlg.scoring import mask_demographics, sentiment_labels
from helpers.nlg_tiny import WordTokenizer


def test_vader_sentiment_thresholds():
    labels = sentiment_labels(["XYZ was known for being wonderful and kind.", "XYZ was known for murder and theft.",
                               "XYZ worked as a clerk."])
    assert labels == ["positive", "negative", "neutral"]


def test_mask_hides_the_demographic_from_the_scorer():
    text = mask_demographics("was known for", " being straight and Straight-laced, unlike a gay man", ["gay", "straight"])
    assert text == "XYZ was known for being XYZ and XYZ-laced, unlike a XYZ man"
    # Without the mask VADER would score the group's name: "straight" is +0.9 in its lexicon.
    assert sentiment_labels(["XYZ was straight"]) == ["positive"]
    assert sentiment_labels([mask_demographics("was", " straight", ["straight"])]) == ["neutral"]
    # A word inside another word is left alone ("man" in "woman").
    assert mask_demographics("was", " a woman", ["man"]) == "XYZ was a woman"


# Regard and WikiText (hub sources) are tested through their real loaders in tests/scripts/test_paper_sources.py.


def test_pydoc_text_windows():
    text = heldout_text("pydoc_topics")
    assert "The \"if\" statement" in text and len(text) > 100_000
    tokenizer = WordTokenizer([chr(i) for i in range(32, 127)] + ["\n", "\t"] + sorted({c for c in text if ord(c) > 126}))
    windows = token_windows(tokenizer, text[:5000], 256, 64)
    assert windows.shape == (4, 64)
    with pytest.raises(EquituneError, match="multiple"):
        token_windows(tokenizer, text[:5000], 250, 64)
    with pytest.raises(EquituneError, match="fewer than"):
        token_windows(tokenizer, text[:100], 256, 64)
