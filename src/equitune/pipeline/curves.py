"""Per-step curves of one run as a DVC plots file: a CSV with one row per step and one column per value.

A training stage names its curve file (a path from dvc.yaml) and the values that make it; the stage's
:class:`~equitune.pipeline.tracking.TrackedRun` feeds it everything logged with an explicit step, so the curve and
MLflow's metric history are the same numbers. dvc.yaml declares the files under ``plots:`` with their axes, which
is what ``dvc plots show`` draws and ``dvc plots diff <rev> <rev>`` overlays across experiments.

Values logged at the same step fill one row; a value not logged at a step leaves its cell empty. The reports read
their curves back from these files with :func:`read_curve` (the one curve format of the pipeline).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..core.errors import ConfigError, DataError
from .io import atomic_path

__all__ = ["Curve", "read_curve"]


class Curve:
    """The rows of one curve file, written atomically by :meth:`write` (normally when the run ends well).

    ``x`` names the step column (``"epoch"``, ``"examples"``, ``"step"``); ``y`` the value columns, in order.
    """

    def __init__(self, path: str | os.PathLike, x: str, y: Sequence[str]):
        self.path, self.x, self.y = Path(path), x, tuple(y)
        if self.path.suffix != ".csv":
            raise ConfigError(f"curve file {self.path}: expected a .csv path (DVC plots reads CSV by its suffix)")
        if not self.y or len(set(self.y)) != len(self.y) or x in self.y:
            raise ConfigError(f"curve {self.path}: y must name distinct columns other than x={x!r}; got {list(y)}")
        self._rows: dict[int | float, dict[str, float]] = {}

    def add(self, step: int | float, values: Mapping[str, object]) -> None:
        """Record the curve's columns found in ``values`` at ``step`` (other keys are not part of this curve)."""
        picked = {key: float(values[key]) for key in self.y if key in values}
        bad = {key: value for key, value in picked.items() if not math.isfinite(value)}
        if bad:
            raise ValueError(f"curve {self.path}: non-finite values at {self.x}={step}: {bad}")
        if picked:
            self._rows.setdefault(step, {}).update(picked)

    def rows(self) -> list[dict[str, float]]:
        return [{self.x: step, **values} for step, values in sorted(self._rows.items())]

    def write(self) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[self.x, *self.y], lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({key: _format(value) for key, value in row.items()})
        with atomic_path(self.path) as tmp:
            tmp.write_text(buffer.getvalue())
        return self.path


def _format(value: float) -> str:
    """Steps as integers when they are whole; values with repr precision (what MLflow stores too)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def read_curve(path: str | os.PathLike, stage: str) -> dict[float, dict[str, float]]:
    """A curve file as ``{step: {column: value}}`` in step order (a cell left empty is not in its step's dict);
    a DataError naming ``stage`` (the stage that writes the file) when it is missing."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing: run dvc repro {stage}")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        x = reader.fieldnames[0] if reader.fieldnames else None
        if x is None:
            raise DataError(f"{path}: not a curve file (no header); rerun dvc repro {stage}")
        rows = {float(row[x]): {key: float(value) for key, value in row.items() if key != x and value != ""}
                for row in reader}
    return dict(sorted(rows.items()))
