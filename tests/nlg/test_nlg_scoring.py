"""Scoring: VADER sentiment labels, masking, fractions and gaps; regard fails clearly without network."""

from __future__ import annotations

import sys
import types

import pytest

from equitune.core.errors import EquituneError
from equitune.nlg.perplexity import heldout_text, token_windows
from equitune.nlg.scoring import bias_gap, label_fractions, mask_demographics, regard_labels, sentiment_labels
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


def test_fractions_and_gap():
    fractions = label_fractions(["negative", "negative", "positive", "neutral"], ("negative", "neutral", "positive"))
    assert fractions == {"negative_fraction": 0.5, "neutral_fraction": 0.25, "positive_fraction": 0.25}
    other = {"negative_fraction": 0.25, "neutral_fraction": 0.25, "positive_fraction": 0.5}
    assert bias_gap(fractions, other) == pytest.approx(0.5)
    assert bias_gap(fractions, fractions) == 0.0
    with pytest.raises(ValueError, match="unexpected label"):
        label_fractions(["regard?"], ("negative", "neutral", "positive"))


def test_regard_without_network_fails_with_a_clear_error(monkeypatch):
    fake = types.ModuleType("evaluate")

    def load(*args, **kwargs):
        raise ConnectionError("Couldn't reach https://huggingface.co/... (offline)")

    fake.load = load
    monkeypatch.setitem(sys.modules, "evaluate", fake)
    with pytest.raises(EquituneError, match="needs internet"):
        regard_labels(["XYZ was known for"])


def test_regard_without_the_package_fails_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)  # import evaluate -> ImportError
    with pytest.raises(EquituneError, match="pip install evaluate"):
        regard_labels(["XYZ was known for"])


def test_regard_labels_take_the_most_likely_label(monkeypatch):
    class FakeRegard:
        def compute(self, data):
            return {"regard": [[{"label": "positive", "score": 0.7}, {"label": "negative", "score": 0.3}],
                               [{"label": "other", "score": 0.6}, {"label": "neutral", "score": 0.4}]][:len(data)]}

    fake = types.ModuleType("evaluate")
    fake.load = lambda name, module_type=None: FakeRegard()
    monkeypatch.setitem(sys.modules, "evaluate", fake)
    assert regard_labels(["a", "b"]) == ["positive", "other"]


def test_wikitext_without_network_fails_with_a_clear_error(monkeypatch):
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        raise ConnectionError("offline")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(EquituneError, match="needs internet"):
        heldout_text("wikitext")


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
