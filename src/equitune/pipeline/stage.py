"""What every pipeline stage script shares: one error exit, the arguments, the device, the grid check.

A stage script is ``main(argv)`` wrapped by :func:`run_stage`: any :class:`~equitune.core.errors.EquituneError`
(bad params, a grid cell that is not in params, a missing input, an unknown group) prints one readable message
and exits 2. Scripts validate their params and inputs before writing anything. DVC has deleted the stage's outputs before the
script starts; when a stage run by DVC fails (a refusal, a crash, an interrupt), :func:`run_stage` puts back the
outputs ``dvc.lock`` still records (:func:`equitune.pipeline.lockfile.restore_outputs`), so a bad params edit
reaching ``dvc repro -s STAGE`` loses no committed metric, curve or report.
Before ``main`` runs, :func:`run_stage` pins torch's CPU kernels to ``base.cpu_isa`` of the params file
(:mod:`equitune.pipeline.reproducibility`): a stage script must not run a torch operation at import time.
Inside ``main``, :func:`equitune.pipeline.context.open_stage` gives the rest of the skeleton (params, cell check,
device or torchrun group, seeding, the tracked run); :func:`add_paths` and :func:`add_options` declare the arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from ..core.errors import ConfigError, EquituneError
from .lockfile import restore_outputs
from .reproducibility import apply_cpu_isa
from .schema import BaseParams, ParamsError, read_params_file

__all__ = ["add_options", "add_paths", "argument_parser", "check_in_grid", "keep_previous_outputs", "resolve_device", "run_stage", "select_device"]


def run_stage(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    try:
        try:
            _pin_cpu_kernels(argv)
            main(argv)
        except BaseException as failure:
            if not (isinstance(failure, SystemExit) and failure.code in (0, None)):
                keep_previous_outputs()
            raise
    except EquituneError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def keep_previous_outputs(environ: Mapping[str, str] | None = None, root: Path | None = None) -> None:
    """After a failed stage that DVC started, put back the outputs DVC deleted and the lock still records.

    Only under DVC (``DVC_STAGE`` names the stage) and only once per run (rank 0 of a torchrun group). The stage's
    working directory is the repository DVC runs in (under ``dvc exp run --temp`` a copy, which is where the
    outputs were deleted, unlike ``DVC_ROOT``). A problem while restoring is reported and never hides the stage's
    own failure.
    """
    environ = os.environ if environ is None else environ
    stage = environ.get("DVC_STAGE")
    if not stage or environ.get("RANK", "0") != "0":
        return
    root = Path.cwd() if root is None else root
    try:
        restored, missing = restore_outputs(root, stage)
    except Exception as error:  # noqa: BLE001 - the stage's own error is the one to raise
        print(f"note: {stage} failed and its previous outputs could not be put back ({error}); "
              "`git checkout -- <path>` or `dvc checkout` restores them", file=sys.stderr)
        return
    if restored:
        print(f"note: {stage} failed; its previous outputs recorded in dvc.lock are back in place: "
              f"{', '.join(restored)}", file=sys.stderr)
    if missing:
        print(f"note: {stage} failed; no copy of {', '.join(missing)} with the md5 dvc.lock records was found in "
              "DVC's cache or git's HEAD", file=sys.stderr)


def select_device(requested: str, environ: Mapping[str, str], cuda_count: int) -> str:
    """The device a process should use, from ``base.device``, its environment and the visible CUDA devices.

    One process per GPU, the way both torchrun and a per-GPU queue worker run: ``LOCAL_RANK`` (set by torchrun;
    0 when absent) indexes the devices that ``CUDA_VISIBLE_DEVICES`` leaves visible (CUDA itself renumbers those
    from 0, so ``cuda_count`` already honours it). A rank without a device of its own is an error, never a second
    process on the same GPU or a silent fall-back to the CPU.
    """
    local_rank = _local_rank(environ)
    if requested == "cpu" or (requested == "auto" and cuda_count == 0):
        return "cpu"
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    if cuda_count == 0:
        raise ConfigError(f"base.device is {requested!r} but no CUDA device is visible (CUDA_VISIBLE_DEVICES is "
                          f"{shown}); use base.device 'cpu' or 'auto', or make a GPU visible")
    if local_rank >= cuda_count:
        raise ConfigError(
            f"LOCAL_RANK={local_rank} needs CUDA device {local_rank}, but only {cuda_count} "
            f"{'is' if cuda_count == 1 else 'are'} visible (CUDA_VISIBLE_DEVICES is {shown}): start at most "
            f"{cuda_count} process(es) per machine (torchrun --nproc_per_node={cuda_count}) or make more GPUs visible")
    return f"cuda:{local_rank}"


def _local_rank(environ: Mapping[str, str]) -> int:
    text = environ.get("LOCAL_RANK")
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise ConfigError(f"LOCAL_RANK={text!r} is not a process index (0, 1, ...); it is set by torchrun, "
                          "leave it unset for a single process")
    return int(text)


def resolve_device(base: BaseParams, environ: Mapping[str, str] | None = None) -> torch.device:
    """:func:`select_device` for this process: ``base.device``, ``os.environ`` and torch's count of CUDA devices."""
    environ = os.environ if environ is None else environ
    cuda_count = torch.cuda.device_count() if base.device != "cpu" else 0
    return torch.device(select_device(base.device, environ, cuda_count))


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


def check_in_grid(name: str, value: object, allowed: Iterable[object]) -> None:
    """A matrix stage's argument must be one of the grid values in params (so DVC tracks what ran)."""
    allowed = list(allowed)
    if value not in allowed:
        raise ParamsError(f"{name}={value!r} is not in the params grid; allowed: {allowed}")


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def add_paths(parser: argparse.ArgumentParser, **helps: str) -> argparse.ArgumentParser:
    """One required path option per keyword (``metrics_dir="..."`` -> ``--metrics-dir``), with its help text."""
    for name, text in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, help=text)
    return parser


def add_options(parser: argparse.ArgumentParser, **types: type) -> argparse.ArgumentParser:
    """One required option per keyword, of that type (a grid cell's coordinates: ``split=str, seed=int``)."""
    for name, kind in types.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, required=True)
    return parser
