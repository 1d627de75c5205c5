"""SCAN data: the grammar's counts, the official split definitions, the hold-out, the download verification."""

from __future__ import annotations

import pytest

from equitune.scan.data import (
    OFFICIAL_FILES,
    OfficialDataError,
    download_official_split,
    format_lines,
    generate_split,
    hold_out_validation,
    input_vocabulary,
    output_vocabulary,
    pairs_checksum,
    parse_lines,
)
from equitune.scan.grammar import MAX_COMMAND_WORDS, all_pairs


def test_grammar_counts():
    pairs = all_pairs()
    assert len(pairs) == 20910
    assert len({c for c, _ in pairs}) == 20910
    assert max(len(a.split()) for _, a in pairs) == 48
    assert max(len(c.split()) for c, _ in pairs) == MAX_COMMAND_WORDS == 9
    assert len({w for c, _ in pairs for w in c.split()}) == 13
    assert {w for _, a in pairs for w in a.split()} == {"WALK", "LOOK", "RUN", "JUMP", "TURN_LEFT", "TURN_RIGHT"}
    assert len(input_vocabulary()) == 14 and len(output_vocabulary()) == 9  # + padding / + pad, sos, eos


@pytest.mark.parametrize("command, actions", [
    ("jump", "JUMP"),
    ("turn left twice", "TURN_LEFT TURN_LEFT"),
    ("walk opposite right", "TURN_RIGHT TURN_RIGHT WALK"),
    ("look around left", "TURN_LEFT LOOK TURN_LEFT LOOK TURN_LEFT LOOK TURN_LEFT LOOK"),
    ("run after jump left", "TURN_LEFT JUMP RUN"),
    ("walk twice and turn around right", "WALK WALK TURN_RIGHT TURN_RIGHT TURN_RIGHT TURN_RIGHT"),
])
def test_semantics(command, actions):
    assert dict(all_pairs())[command] == actions


def test_add_jump_split():
    split = generate_split("add_jump")
    assert len(split.train) == 14670 and len(split.test) == 7706
    assert sum(1 for c, _ in split.train if c == "jump") == 1467
    assert len(set(split.train)) == 13204  # 13,203 commands without "jump" + the bare "jump"
    assert all("jump" not in c.split() for c, _ in split.train if c != "jump")
    assert all("jump" in c.split() and c != "jump" for c, _ in split.test)
    assert not set(split.train) & set(split.test)


def test_around_right_split():
    split = generate_split("around_right")
    assert len(split.train) == 15225 and len(split.test) == 4476
    assert all("around right" not in c for c, _ in split.train)
    assert all("around right" in c and "turn around right" not in c for c, _ in split.test)
    assert not set(split.train) & set(split.test)
    assert 20910 - len(split.train) - len(split.test) == 1209  # the "turn around right" commands: in neither


def test_validation_hold_out_is_seeded_and_partitions_the_file():
    train = generate_split("add_jump").train
    kept, held = hold_out_validation(train, 0.2, seed=0)
    assert len(held) == round(0.2 * len(train)) and len(kept) + len(held) == len(train)
    assert sorted(kept + held) == sorted(train)
    assert hold_out_validation(train, 0.2, seed=0) == (kept, held)
    assert hold_out_validation(train, 0.2, seed=1)[1] != held


def test_line_format_round_trip_and_errors():
    pairs = list(generate_split("around_right").test[:50])
    text = format_lines(pairs)
    assert text.splitlines()[0].startswith("IN: ") and " OUT: I_" in text.splitlines()[0]
    assert parse_lines(text) == pairs
    with pytest.raises(OfficialDataError, match="line 2"):
        parse_lines("IN: walk OUT: I_WALK\nwalk WALK\n")


class FakeTransport:
    """Serves official-looking files from memory; records the URLs asked for."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.urls = files, []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.urls.append((url, timeout))
        for path, body in self.files.items():
            if url.endswith(path):
                return body
        raise OSError("404")


def _official_like(split: str, shuffle_seed: int = 1) -> dict[str, bytes]:
    import random

    data = generate_split(split)
    files = {}
    for path, pairs in zip(OFFICIAL_FILES[split], (data.train, data.test), strict=True):
        lines = list(pairs)
        random.Random(shuffle_seed).shuffle(lines)  # the official order differs from ours
        files[path] = format_lines(lines).encode()
    return files


def test_download_accepts_the_official_content_in_any_order():
    transport = FakeTransport(_official_like("add_jump"))
    split = download_official_split("add_jump", "https://example.invalid/SCAN/", 7.0, fetch=transport)
    assert [u for u, _ in transport.urls] == [f"https://example.invalid/SCAN/{p}" for p in OFFICIAL_FILES["add_jump"]]
    assert all(t == 7.0 for _, t in transport.urls)
    assert pairs_checksum(split.train) == pairs_checksum(generate_split("add_jump").train)
    assert len(split.test) == 7706


def test_download_rejects_a_corrupted_file():
    files = _official_like("around_right")
    test_path = OFFICIAL_FILES["around_right"][1]
    files[test_path] = files[test_path].replace(b"I_TURN_RIGHT I_WALK\n", b"I_TURN_LEFT I_WALK\n", 1)
    with pytest.raises(OfficialDataError, match="differs from the SCAN grammar"):
        download_official_split("around_right", "https://x", 1.0, fetch=FakeTransport(files))


def test_download_rejects_a_missing_line_and_garbage():
    files = _official_like("add_jump")
    train_path = OFFICIAL_FILES["add_jump"][0]
    files[train_path] = b"\n".join(files[train_path].splitlines()[1:])
    with pytest.raises(OfficialDataError, match="14669 lines, expected 14670"):
        download_official_split("add_jump", "https://x", 1.0, fetch=FakeTransport(files))
    files = _official_like("add_jump")
    files[train_path] = b"<html>rate limited</html>"
    with pytest.raises(OfficialDataError, match="not 'IN: ... OUT: ...'"):
        download_official_split("add_jump", "https://x", 1.0, fetch=FakeTransport(files))


def test_download_offline_says_so():
    def offline(url, timeout):
        raise OSError("Network is unreachable")

    with pytest.raises(OfficialDataError, match="offline.*source: generate"):
        download_official_split("add_jump", "https://x", 1.0, fetch=offline)
