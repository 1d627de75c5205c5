"""English prose in which the demographic words occur: Jane Austen's six novels, offline and checksum-verified.

The Debian package ``r-cran-janeaustenr`` (1.0.0-1; ``apt-get install --no-install-recommends r-cran-janeaustenr``,
which ``scripts/setup.sh`` runs) installs the novels as an R lazy-load database,
``/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb``. The texts are Project Gutenberg's public-domain editions;
the package (Julia Silge's janeaustenr, CRAN) is MIT-licensed. Nothing of R is needed to read them: the file is a
sequence of records, each a 4-byte big-endian length and a zlib stream holding one serialized R character vector
(a novel, one element per printed line). :func:`austen_novels` checks the file's sha256 against
:data:`AUSTEN_SHA256` before anything else, so the text scored is exactly the one described here; a different file
(another version, a corrupt download) is refused with a clear error rather than silently measured.

Each novel becomes one text: its paragraphs (blank-line separated) with their line breaks replaced by spaces,
joined by blank lines. The order is the file's: Emma, Mansfield Park, Northanger Abbey, Persuasion, Pride and
Prejudice, Sense and Sensibility.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

from ..core.errors import DataError

__all__ = ["AUSTEN_LICENSE", "AUSTEN_SHA256", "AUSTEN_TITLES", "austen_novels", "file_sha256", "parse_r_strings"]

AUSTEN_SHA256 = "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21"
"""sha256 of ``data/Rdata.rdb`` in Debian's r-cran-janeaustenr 1.0.0-1 (Debian 12)."""
AUSTEN_TITLES = ("EMMA", "MANSFIELD PARK", "NORTHANGER ABBEY", "PERSUASION", "PRIDE AND PREJUDICE",
                 "SENSE AND SENSIBILITY")
AUSTEN_LICENSE = ("texts: public domain (Project Gutenberg editions of Jane Austen's novels, 1811-1818); "
                  "package janeaustenr by Julia Silge: MIT")
_INSTALL = "apt-get install --no-install-recommends r-cran-janeaustenr (version 1.0.0-1; scripts/setup.sh does it)"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_r_strings(data: bytes, where: str) -> list[str | None]:
    """A serialized R character vector (XDR binary format, versions 2 and 3) as Python strings (NA -> None)."""
    def integer(position: int) -> int:
        if position + 4 > len(data):
            raise DataError(f"{where}: truncated R data")
        return struct.unpack(">i", data[position:position + 4])[0]

    if data[:2] != b"X\n":
        raise DataError(f"{where}: not R's binary serialization (expected 'X\\n', got {data[:2]!r})")
    version = integer(2)
    position = 14  # 'X\n', the format version, the writer's and the minimal reader's R versions
    if version == 3:
        position += 4 + integer(position)  # the native encoding's name
    elif version != 2:
        raise DataError(f"{where}: R serialization version {version} is not supported (2 or 3)")
    flags = integer(position)
    if flags & 0xFF != 16:  # STRSXP
        raise DataError(f"{where}: expected an R character vector, found an object of type {flags & 0xFF}")
    count = integer(position + 4)
    position += 8
    strings: list[str | None] = []
    for _ in range(count):
        if integer(position) & 0xFF != 9:  # CHARSXP
            raise DataError(f"{where}: malformed R character vector")
        length = integer(position + 4)
        position += 8
        if length == -1:
            strings.append(None)
            continue
        strings.append(data[position:position + length].decode("utf-8"))
        position += length
    return strings


def _records(data: bytes, where: str) -> list[bytes]:
    """The decompressed records of an R lazy-load database: [4-byte length][zlib stream], one after another."""
    records, position = [], 0
    while position < len(data):
        expected = struct.unpack(">I", data[position:position + 4])[0]
        inflater = zlib.decompressobj()
        try:
            record = inflater.decompress(data[position + 4:])
        except zlib.error as error:
            raise DataError(f"{where}: record at byte {position} is not zlib data ({error})") from None
        if len(record) != expected or not inflater.eof:
            raise DataError(f"{where}: record at byte {position} has {len(record)} bytes, its header says {expected}")
        records.append(record)
        position = len(data) - len(inflater.unused_data)
    return records


def _paragraphs(lines: list[str | None]) -> str:
    text = "\n".join(line or "" for line in lines)
    paragraphs = (" ".join(block.split()) for block in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


def austen_novels(path: str | Path, expected_sha256: str = AUSTEN_SHA256) -> list[tuple[str, str]]:
    """``[(title, text), ...]`` of the six novels, after checking the file's sha256 (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Jane Austen's novels not found at {path} (nlg.perplexity.austen_path): {_INSTALL}")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise DataError(f"{path}: sha256 {actual} differs from the expected {expected_sha256} of "
                        "r-cran-janeaustenr 1.0.0-1's data/Rdata.rdb: this is another file or another version of it, "
                        f"and its text is not the one this experiment describes. Install that version ({_INSTALL}) "
                        "or point nlg.perplexity.austen_path at it")
    where = str(path)
    novels = [parse_r_strings(record, where) for record in _records(path.read_bytes(), where)]
    titles = [next((line for line in lines if line), "").upper() for lines in novels]
    if titles != list(AUSTEN_TITLES):  # cannot happen with the right checksum; guards the parser itself
        raise DataError(f"{where}: expected the novels {list(AUSTEN_TITLES)}, found {titles}")
    return [(title, _paragraphs(lines)) for title, lines in zip(AUSTEN_TITLES, novels, strict=True)]
