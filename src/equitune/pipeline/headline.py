"""Headline metrics: the numbers of the README's results table, one small JSON file per number, which
``dvc metrics show`` and ``dvc metrics diff`` print as a readable table.

``dvc metrics show`` prints one row per metrics file and one column per key of any file. The per-cell files
(hundreds of nested keys) are therefore plain committed outputs, and the metrics DVC shows are these files, all
with the same few keys: a row per headline number, named by its path (``scan/add_jump-jump_run-lstm-equitune``),
and the columns

- ``value``: the number (a mean over seeds, or the statistic itself), in the unit of the per-cell files;
- ``std`` and ``seeds``: the sample standard deviation over seeds and how many (a number over seeds);
- ``ci_low``, ``ci_high``, ``p_value``: its confidence interval and p-value (a statistic that has them).

The top-level ``report`` stage writes them (pipelines/report.py); details stay in the per-cell files.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..core.errors import DataError
from .io import write_json

__all__ = ["COLUMNS", "over_seeds", "statistic", "write_headline"]

COLUMNS = ("value", "std", "seeds", "ci_low", "ci_high", "p_value")
"""Every key a headline file may have: the columns of ``dvc metrics show``."""

_NAME = re.compile(r"[A-Za-z0-9_+]+(-[A-Za-z0-9_+]+)*(/[A-Za-z0-9_+]+(-[A-Za-z0-9_+]+)*)*")


def over_seeds(values: Iterable[float]) -> dict[str, float]:
    """A number measured once per seed: its mean, sample standard deviation (0 for one seed) and the count."""
    values = [float(v) for v in values]
    if not values:
        raise DataError("a headline number over seeds needs at least one seed's value")
    return {"value": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": len(values)}


def statistic(value: float, ci: Iterable[float] | None = None, p_value: float | None = None) -> dict[str, float]:
    """A number computed once (a bias gap, a perplexity), with its confidence interval and p-value when it has them."""
    entry = {"value": float(value)}
    if ci is not None:
        entry["ci_low"], entry["ci_high"] = (float(bound) for bound in ci)
    if p_value is not None:
        entry["p_value"] = float(p_value)
    return entry


def _check(name: str, entry: Mapping[str, float]) -> None:
    if not _NAME.fullmatch(name):
        raise DataError(f"headline name {name!r}: expected words of letters, digits, '_', '+' joined by '-', "
                        "in folders joined by '/'")
    unknown = sorted(set(entry) - set(COLUMNS))
    if "value" not in entry or unknown:
        raise DataError(f"headline {name}: needs 'value' and only the keys {list(COLUMNS)}; got {sorted(entry)}")
    bad = {key: v for key, v in entry.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)}
    if bad:
        raise DataError(f"headline {name}: values must be finite numbers; got {bad}")


def write_headline(folder: str | Path, entries: Mapping[str, Mapping[str, float]]) -> list[Path]:
    """Write ``entries`` (name -> headline dict) as ``<folder>/<name>.json``, each atomically, and remove the other
    JSON files under ``folder`` (a number no longer reported, e.g. of a cell gone from the grid), so that the folder
    holds exactly this report's numbers. Everything is checked before anything is written."""
    folder = Path(folder)
    for name, entry in entries.items():
        _check(name, entry)
    written = []
    for name in sorted(entries):
        path = folder / f"{name}.json"
        write_json(path, {key: entries[name][key] for key in COLUMNS if key in entries[name]})
        written.append(path)
    keep = set(written)
    for stale in sorted(folder.rglob("*.json")):
        if stale not in keep:
            stale.unlink()
    for empty in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(empty.iterdir()):
            empty.rmdir()
    return written
