"""Mean ± standard deviation over seeds, the one summary every report prints.

The standard deviation is the sample one (n - 1), 0 for a single value: a report of one seed shows ± 0.0 rather
than failing, and the number of seeds is always printed beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["format_mean_std", "mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of ``values``; the deviation is 0.0 for a single value."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (100: fractions shown as percentages), ``digits`` decimals."""
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
