"""SCAN splits, the line format, vocabularies, the validation hold-out and the official-file download.

Splits (official definitions, checked against the official line counts by the tests):
- ``add_jump``: test = every command containing "jump" except the bare "jump" (7,706); train = the 13,203
  commands without "jump" plus the bare "jump" repeated 1,467 times (14,670 lines).
- ``around_right``: train = commands without "around right" (15,225); test = commands with "<verb> around right"
  but no "turn around right" (4,476). The 1,209 commands with "turn around right" are in neither.

Files use the official line format ``IN: <command> OUT: I_<ACTION> ...``. The official files can be downloaded
(:func:`download_official_split`): they are verified to hold exactly the generated pairs (as multisets), so the
download changes only the line order.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DataError
from .grammar import ACTION_WORDS, COMMAND_WORDS, all_pairs

__all__ = [
    "SPLITS", "OFFICIAL_FILES", "OfficialDataError", "Pair", "ScanSplit", "format_lines", "parse_lines",
    "generate_split", "hold_out_validation", "pairs_checksum", "download_official_split", "read_pairs",
    "INPUT_SPECIALS", "OUTPUT_SPECIALS", "input_vocabulary", "output_vocabulary",
]

Pair = tuple[str, str]  # (command, actions), space-joined, actions without the I_ prefix

SPLITS = ("add_jump", "around_right")
BARE_JUMP_REPEATS = 1467

OFFICIAL_FILES = {
    "add_jump": ("add_prim_split/tasks_train_addprim_jump.txt", "add_prim_split/tasks_test_addprim_jump.txt"),
    "around_right": ("template_split/tasks_train_template_around_right.txt",
                     "template_split/tasks_test_template_around_right.txt"),
}
"""Split -> (train, test) paths inside github.com/brendenlake/SCAN."""
OFFICIAL_REPOSITORY = "https://github.com/brendenlake/SCAN"

INPUT_SPECIALS = ("<pad>",)
OUTPUT_SPECIALS = ("<pad>", "<sos>", "<eos>")


def input_vocabulary() -> list[str]:
    """Id -> word for commands: padding first (id 0), then the 13 command words."""
    return [*INPUT_SPECIALS, *COMMAND_WORDS]


def output_vocabulary() -> list[str]:
    """Id -> token for actions: padding (0), start (1), end (2), then the 6 actions."""
    return [*OUTPUT_SPECIALS, *ACTION_WORDS]


class OfficialDataError(DataError):
    """The official SCAN files could not be fetched, or they differ from the grammar's pairs."""


@dataclass(frozen=True)
class ScanSplit:
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]


def _is_add_jump_test(command: str) -> bool:
    return "jump" in command.split() and command != "jump"


def _is_around_right_test(command: str) -> bool:
    return any(f"{verb} around right" in command for verb in ("walk", "look", "run", "jump")) \
        and "turn around right" not in command


def generate_split(name: str) -> ScanSplit:
    """The (train, test) pairs of a split, generated from the grammar in its fixed order."""
    pairs = all_pairs()
    if name == "add_jump":
        test = tuple(p for p in pairs if _is_add_jump_test(p[0]))
        train = tuple(p for p in pairs if "jump" not in p[0].split())
        bare = next(p for p in pairs if p[0] == "jump")
        return ScanSplit(train + (bare,) * BARE_JUMP_REPEATS, test)
    if name == "around_right":
        test = tuple(p for p in pairs if _is_around_right_test(p[0]))
        train = tuple(p for p in pairs if "around right" not in p[0])
        return ScanSplit(train, test)
    raise ValueError(f"unknown SCAN split {name!r}; allowed: {', '.join(SPLITS)}")


def hold_out_validation(train: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded random hold-out of ``fraction`` of the training *lines* (as the reference does)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1); got {fraction}")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    validation_size = round(fraction * len(train))
    validation_index = set(order[:validation_size])
    kept = [train[i] for i in range(len(train)) if i not in validation_index]
    held = [train[i] for i in sorted(validation_index)]
    return kept, held


# ------------------------------------------------------------------------------------------ line format
def format_lines(pairs: Sequence[Pair]) -> str:
    return "".join(f"IN: {c} OUT: {' '.join('I_' + a for a in acts.split())}\n" for c, acts in pairs)


def parse_lines(text: str, source: str = "<text>") -> list[Pair]:
    """Parse ``IN: ... OUT: ...`` lines (blank lines skipped); a malformed line is an error naming its number."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not line.startswith("IN: ") or " OUT: " not in line:
            raise OfficialDataError(f"{source}: line {number} is not 'IN: ... OUT: ...': {line[:80]!r}")
        command, actions = line[4:].split(" OUT: ", 1)
        words = actions.split()
        if not all(w.startswith("I_") for w in words):
            raise OfficialDataError(f"{source}: line {number}: actions must start with I_: {actions[:80]!r}")
        pairs.append((command.strip(), " ".join(w[2:] for w in words)))
    return pairs


def read_pairs(path: str | Path) -> list[Pair]:
    return parse_lines(Path(path).read_text(), str(path))


def pairs_checksum(pairs: Sequence[Pair]) -> str:
    """sha256 of the sorted lines: the same for any line order, different for any other multiset of pairs."""
    digest = hashlib.sha256()
    for command, actions in sorted(pairs):
        digest.update(f"{command}\t{actions}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- download
Fetch = Callable[[str, float], bytes]


def _urllib_fetch(url: str, timeout: float) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL from params)
        return response.read()


def download_official_split(name: str, base_url: str, timeout: float, fetch: Fetch | None = None) -> ScanSplit:
    """Fetch a split's official train/test files and check they equal the generated pairs (as multisets).

    ``fetch(url, timeout) -> bytes`` is the transport (urllib by default; tests pass a fake one).
    Raises :class:`OfficialDataError` with the URL and the cause when offline, and with the first differing
    pairs when the content does not match the grammar.
    """
    if name not in OFFICIAL_FILES:
        raise ValueError(f"unknown SCAN split {name!r}; allowed: {', '.join(SPLITS)}")
    fetch = fetch or _urllib_fetch
    expected = generate_split(name)
    parts = []
    for path, wanted in zip(OFFICIAL_FILES[name], (expected.train, expected.test), strict=True):
        url = f"{base_url.rstrip('/')}/{path}"
        try:
            raw = fetch(url, timeout)
        except Exception as error:  # noqa: BLE001 (any transport failure means: not available)
            raise OfficialDataError(
                f"could not download {url} ({type(error).__name__}: {error}). This machine may be offline: "
                f"download the official files ({', '.join(OFFICIAL_FILES[name])}) from "
                f"{OFFICIAL_REPOSITORY} elsewhere and set scan.data.official_base_url to their local copy "
                "(file:///path/to/SCAN, with the same sub-folders), or set scan.data.source: generate to use the "
                "grammar (identical pairs, only the line order differs)"
            ) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise OfficialDataError(f"{url}: not UTF-8 text") from None
        got = parse_lines(text, url)
        if pairs_checksum(got) != pairs_checksum(wanted):
            got_count, want_count = Counter(got), Counter(wanted)
            extra = list((got_count - want_count).elements())[:3]
            missing = list((want_count - got_count).elements())[:3]
            raise OfficialDataError(
                f"{url}: content differs from the SCAN grammar's {name} split ({len(got)} lines, expected "
                f"{len(wanted)}; checksum {pairs_checksum(got)[:12]} != {pairs_checksum(wanted)[:12]}); "
                f"unexpected pairs e.g. {extra}, missing pairs e.g. {missing}"
            )
        parts.append(tuple(got))
    return ScanSplit(parts[0], parts[1])
