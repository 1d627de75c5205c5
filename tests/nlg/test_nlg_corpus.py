"""The prose corpus: the R lazy-load reader, the checksum that refuses any other file with a clear error, the real
Debian file when installed, and the choice of the windows where each axis's group acts."""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch

from equitune.core.errors import ConfigError, DataError
from equitune.nlg.config import PerplexityParams
from equitune.nlg.corpus import AUSTEN_SHA256, AUSTEN_TITLES, austen_novels, parse_r_strings
from equitune.nlg.perplexity import select_windows
from helpers.nlg_tiny import WordTokenizer

INSTALLED = Path(PerplexityParams().austen_path)


def r_character_vector(strings: list[str | None]) -> bytes:
    """R's binary serialization (version 3) of a character vector, as R's serialize() writes it."""
    out = b"X\n" + struct.pack(">iii", 3, 0x040202, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(strings))
    for s in strings:
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            data = s.encode("utf-8")
            out += struct.pack(">ii", 9 | (1 << 15), len(data)) + data
    return out


def lazy_load_database(novels: list[list[str | None]]) -> bytes:
    records = [r_character_vector(lines) for lines in novels]
    return b"".join(struct.pack(">I", len(r)) + zlib.compress(r) for r in records)


def fake_novels() -> list[list[str | None]]:
    return [[title, "", "Chapter 1", "", "The man and the", "woman met.", "", None, "He said no."]
            for title in AUSTEN_TITLES]


def test_the_reader_returns_the_novels_as_paragraphs(tmp_path):
    path = tmp_path / "Rdata.rdb"
    path.write_bytes(lazy_load_database(fake_novels()))
    novels = austen_novels(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert [title for title, _ in novels] == list(AUSTEN_TITLES)
    assert novels[0][1] == "EMMA\n\nChapter 1\n\nThe man and the woman met.\n\nHe said no."
    assert parse_r_strings(r_character_vector(["a", None, "é"]), "x") == ["a", None, "é"]


def test_a_file_whose_checksum_differs_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "Rdata.rdb"
    novels = fake_novels()
    path.write_bytes(lazy_load_database(novels))
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    novels[4][4] = "The man and the"  # one changed word: same format, different text
    novels[4][5] = "lady met."
    path.write_bytes(lazy_load_database(novels))
    with pytest.raises(DataError) as error:
        austen_novels(path, expected_sha256=good)
    message = str(error.value)
    assert str(path) in message and good in message and hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert "another file or another version" in message and "apt-get install" in message
    with pytest.raises(DataError, match="not found .*apt-get install --no-install-recommends r-cran-janeaustenr"):
        austen_novels(tmp_path / "missing.rdb")
    # The default expectation is the Debian file's checksum: any other file is refused.
    with pytest.raises(DataError, match=AUSTEN_SHA256):
        austen_novels(path)


def test_malformed_data_is_a_clear_error(tmp_path):
    path = tmp_path / "Rdata.rdb"
    path.write_bytes(b"\x00\x00\x00\x05not zlib at all")
    with pytest.raises(DataError, match="not zlib data"):
        austen_novels(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="character vector"):
        parse_r_strings(b"X\n" + struct.pack(">iiii", 2, 0, 0, 14) + struct.pack(">i", 0), "x")


@pytest.mark.skipif(not INSTALLED.exists(), reason="r-cran-janeaustenr is not installed (scripts/setup.sh installs it)")
def test_the_installed_debian_file_is_the_one_described():
    novels = dict(austen_novels(INSTALLED))
    assert list(novels) == list(AUSTEN_TITLES)
    pride = novels["PRIDE AND PREJUDICE"]
    assert "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in " \
           "want of a wife." in pride
    words = re.findall(r"[a-z]+", pride.lower())
    assert words.count("man") > 100 and words.count("woman") > 40 and sum(len(t) for t in novels.values()) > 4_000_000


def test_windows_are_chosen_per_axis_where_its_words_occur():
    forms = [" man", " woman", " black", " white", " x", " y", "\n"]
    tokenizer = WordTokenizer(forms)
    first = " x" * 8 + " man" + " x" * 7 + " black" + " y" * 15
    second = " y" * 16 + " white" + " x" * 15 + " woman" + " x" * 15
    equality = {"gender": {0, 1}, "race": {2, 3}}
    settings = PerplexityParams(window=16, windows_per_axis=2)
    scored = select_windows(tokenizer, [("one", first), ("two", second)], settings, equality)
    # one: windows 0 (man), 1 (black); two: 1 (white), 2 (woman). Window 0 of "one" and "two"'s window 0 unused.
    assert scored.origin == [("one", 0), ("one", 1), ("two", 1), ("two", 2)]
    assert scored.axis_windows == {"gender": [0, 3], "race": [1, 2]}
    assert scored.windows.shape == (4, 16) and scored.scored_tokens == 4 * 15
    assert torch.isin(scored.windows[3], torch.tensor([1])).any()
    with pytest.raises(ConfigError, match="only"):
        select_windows(tokenizer, [("one", first)], PerplexityParams(window=16, windows_per_axis=2), equality)
    contiguous = select_windows(tokenizer, [("one", first)], PerplexityParams(window=8, windows_per_axis=None,
                                                                              max_tokens=16), equality)
    assert contiguous.windows.shape == (2, 8) and contiguous.axis_windows["race"] == [0, 1]
