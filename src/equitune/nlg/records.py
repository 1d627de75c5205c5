"""The NLG stages' intermediate files: the tokenised prompts (JSON) and the samples (JSON lines, one per sample)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..pipeline.io import atomic_path, read_json

__all__ = ["read_prompts", "read_records", "write_records"]


def read_prompts(path: str | Path, model: str | None = None, axes: Iterable[str] | None = None) -> dict[str, Any]:
    """The prompts stage's file; when ``model`` / ``axes`` are given it must have been made for them."""
    try:
        prompts = read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run `dvc repro nlg_prompts` first") from None
    if (model is not None and prompts["model"] != model) or (axes is not None and set(prompts["axes"]) != set(axes)):
        raise DataError(f"{path} was made for another model or axes: rerun `dvc repro nlg_prompts`")
    return prompts


def read_records(path: str | Path, stage: str) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file written by ``stage``."""
    try:
        with open(path) as handle:
            return [json.loads(line) for line in handle]
    except FileNotFoundError:
        raise DataError(f"{path} not found: run `dvc repro {stage}` first") from None


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
