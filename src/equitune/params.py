"""The schema of params.yaml: one validated model for the whole file, one section per experiment.

Both profiles (``params.yaml`` = default, ``profiles/paper.yaml`` = paper) validate against this schema.
Stages call :func:`load_params` before doing any work; a bad file raises :class:`ParamsError` whose message
names each bad key, the value and what is allowed (the stage runner prints it and exits 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from .config import ParamsError, StrictModel, format_validation_error
from .images.config import ImagesParams
from .nlg.config import NlgParams
from .scan.config import ScanParams

__all__ = ["BaseParams", "Params", "ParamsError", "load_params"]


class BaseParams(StrictModel):
    """Settings shared by every stage."""

    threads: int = Field(2, ge=1, description="torch intra-op threads (fixed, for reproducible CPU results)")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    deterministic: bool = True


class Params(StrictModel):
    profile: Literal["default", "paper"]
    base: BaseParams = BaseParams()
    scan: ScanParams
    images: ImagesParams
    nlg: NlgParams


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found (run from the repository root, or pass the params file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__} ({str(data)[:60]!r})"
        raise ParamsError(f"{path}: expected a mapping of sections at the top level "
                          f"({', '.join(Params.model_fields)}); got {got}")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, str(path), Params)) from None
