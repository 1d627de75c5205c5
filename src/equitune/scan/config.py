"""Schema of the `scan:` section of params.yaml (filled in by the scan experiment)."""

from __future__ import annotations

from ..config import StrictModel

__all__ = ["ScanParams"]


class ScanParams(StrictModel):
    """Placeholder until the scan experiment lands: accepts only an empty section."""
