"""What every pipeline stage script shares: one error exit, the arguments, the device, the grid check.

A stage script is ``main(argv)`` wrapped by :func:`run_stage`: any :class:`~equitune.core.errors.EquituneError`
(bad params, a grid cell that is not in params, a missing input, an unknown group) prints one readable message
and exits 2. Scripts validate their params and inputs before writing anything, so such an exit leaves no output.
Before ``main`` runs, :func:`run_stage` pins torch's CPU kernels to ``base.cpu_isa`` of the params file
(:mod:`equitune.pipeline.reproducibility`): a stage script must not run a torch operation at import time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence

import torch
from pydantic import ValidationError

from ..core.errors import ConfigError, EquituneError
from .reproducibility import apply_cpu_isa
from .schema import BaseParams, ParamsError, read_params_file

__all__ = ["argument_parser", "check_in_grid", "resolve_device", "run_stage"]


def run_stage(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    try:
        _pin_cpu_kernels(argv)
        main(argv)
    except EquituneError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _pin_cpu_kernels(argv: Sequence[str] | None) -> None:
    """Apply ``base.cpu_isa`` of the stage's params file before ``main`` touches torch. A params file that cannot
    be read or validated is left to ``main``, which reports it (exit 2) before doing any work."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--params", default="params.yaml")
    known, _ = options.parse_known_args(argv)
    try:
        base = BaseParams.model_validate(read_params_file(known.params).get("base") or {})
    except (ParamsError, ValidationError):
        return
    apply_cpu_isa(base.cpu_isa)


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
