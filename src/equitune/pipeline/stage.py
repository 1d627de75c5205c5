"""What every pipeline stage script shares: one error exit, the arguments, the device, the grid check.

A stage script is ``main(argv)`` wrapped by :func:`run_stage`: any :class:`~equitune.core.errors.EquituneError`
(bad params, a grid cell that is not in params, a missing input, an unknown group) prints one readable message
and exits 2. Scripts validate their params and inputs before writing anything, so such an exit leaves no output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence

import torch

from ..core.errors import ConfigError, EquituneError
from .schema import BaseParams, ParamsError

__all__ = ["argument_parser", "check_in_grid", "resolve_device", "run_stage"]


def run_stage(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    try:
        main(argv)
    except EquituneError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def resolve_device(base: BaseParams) -> torch.device:
    if base.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("base.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(base.device)


def check_in_grid(name: str, value: object, allowed: Iterable[object]) -> None:
    """A matrix stage's argument must be one of the grid values in params (so DVC tracks what ran)."""
    allowed = list(allowed)
    if value not in allowed:
        raise ParamsError(f"{name}={value!r} is not in the params grid; allowed: {allowed}")


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser
