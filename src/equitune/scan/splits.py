"""The split files of the SCAN grid: written once by the prepare stage, read by every other stage.

A split folder holds ``{train,validation,test}.txt`` in the official line format (:mod:`.data`); its path comes
from the caller (dvc.yaml passes it to the stage scripts).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.errors import DataError
from .config import ScanParams
from .data import (
    download_official_split,
    format_lines,
    generate_split,
    hold_out_validation,
    pairs_checksum,
    read_pairs,
)
from .training import EncodedPairs, encode_pairs

__all__ = ["PARTS", "load_split_files", "prepare_splits"]

PARTS = ("train", "validation", "test")


def prepare_splits(params: ScanParams, write: Callable[[str, str], None]) -> dict:
    """Every split of the grid as train/validation/test files, via ``write(relative_path, text)``; the summary.

    All splits are fetched (or generated) and verified before anything is written: a failed download of the
    second split must not leave the first one's files behind."""
    data = params.data
    splits = {}
    for split in params.grid.splits:
        if data.source == "official":
            splits[split] = download_official_split(split, data.official_base_url, data.download_timeout_s)
        else:
            splits[split] = generate_split(split)
    summary: dict = {"source": data.source, "splits": {}}
    for split, pairs in splits.items():
        train, validation = hold_out_validation(pairs.train, data.validation_fraction, data.validation_seed)
        for part, rows in (("train", train), ("validation", validation), ("test", pairs.test)):
            write(f"{split}/{part}.txt", format_lines(rows))
        summary["splits"][split] = {
            "train_file_lines": len(pairs.train), "train_lines": len(train), "validation_lines": len(validation),
            "test_lines": len(pairs.test), "train_file_checksum": pairs_checksum(pairs.train),
            "test_checksum": pairs_checksum(pairs.test),
        }
    return summary


def load_split_files(folder: str | Path, max_commands: int | None = None) -> dict[str, EncodedPairs]:
    """The encoded train, validation and test pairs of one split's folder; with ``max_commands``
    (``scan.evaluation.max_commands``), only the first that many lines of validation and test."""
    folder = Path(folder)
    missing = [p for p in PARTS if not (folder / f"{p}.txt").exists()]
    if missing:
        raise DataError(f"{folder}: missing {missing}; run the scan_prepare stage first (dvc repro scan_prepare)")
    pairs = {part: read_pairs(folder / f"{part}.txt") for part in PARTS}
    return {part: encode_pairs(lines if part == "train" else lines[:max_commands]) for part, lines in pairs.items()}
