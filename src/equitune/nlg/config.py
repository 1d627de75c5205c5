"""Schema of the `nlg:` section of params.yaml (filled in by the nlg experiment)."""

from __future__ import annotations

from ..config import StrictModel

__all__ = ["NlgParams"]


class NlgParams(StrictModel):
    """Placeholder until the nlg experiment lands: accepts only an empty section."""
