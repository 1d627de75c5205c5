"""Schema of the `images:` section of params.yaml (filled in by the images experiment)."""

from __future__ import annotations

from ..config import StrictModel

__all__ = ["ImagesParams"]


class ImagesParams(StrictModel):
    """Placeholder until the images experiment lands: accepts only an empty section."""
