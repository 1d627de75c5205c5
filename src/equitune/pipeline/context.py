"""One stage context: what every stage script gets from its parsed arguments, its params section and its grid cell.

A stage script is arguments + :func:`open_stage` + the experiment's work + atomic writes::

    with open_stage(args, "scan", ScanParams, cell=ScanCell(...), distributed_run=True) as stage:
        data = load_split_files(args.data)
        generator = stage.seed(stage.cell.seed)
        with stage.run(tags={...}) as run:
            ...
            if not stage.is_main:
                return  # rank 0 alone writes outputs

:func:`open_stage` validates ``profile``, ``base`` and the section (exit 2 under
:func:`~equitune.pipeline.stage.run_stage`), checks the cell against the grid before any work, and, for a stage that
may run under torchrun, opens the process group (:func:`~equitune.pipeline.distributed.distributed`). The context
gives the params, the device, the seeding (:meth:`StageContext.seed`, with the stage's one thread count,
:func:`stage_threads`), and the tracked MLflow run (:meth:`StageContext.run`: rank 0 only under torchrun, tagged
with the world size there). Seeding stays an explicit call of the script, so that it keeps its place relative to
loading data and building models (the seeded streams, hence the results, depend on that order).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch

from .curves import Curve
from .distributed import DistributedContext, distributed, tracked_run_on_main
from .schema import SectionParams, load_section
from .seeding import seed_everything
from .stage import resolve_device

__all__ = ["StageContext", "open_stage", "stage_threads"]


class GridCell(Protocol):
    def check(self, params: Any) -> None: ...


def stage_threads(loaded: SectionParams[Any]) -> int:
    """The torch thread count of a stage: its section's own ``threads`` where it has one (``scan.threads``: the
    tiny recurrent kernels gain nothing from a second thread), else ``base.threads``. The one place that decides."""
    own = getattr(loaded.section, "threads", None)
    return loaded.base.threads if own is None else own


@dataclass
class StageContext:
    """The validated params, the cell, the device or distributed context, seeding and tracking of one stage."""

    args: argparse.Namespace
    task: str  # the MLflow experiment the stage's runs go to
    loaded: SectionParams[Any]
    cell: Any = None
    distribution: DistributedContext | None = None

    @property
    def params(self) -> Any:
        """The stage's section (``base`` for a stage that reads no experiment's section)."""
        return self.loaded.base if self.loaded.section is None else self.loaded.section

    @property
    def base(self) -> Any:
        return self.loaded.base

    @property
    def profile(self) -> str:
        return self.loaded.profile

    @property
    def threads(self) -> int:
        return stage_threads(self.loaded)

    @cached_property
    def device(self) -> torch.device:
        """The process's device: the distributed context's, else ``base.device`` resolved on first use."""
        return self.distribution.device if self.distribution is not None else resolve_device(self.loaded.base)

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that logs, checkpoints and writes outputs."""
        return self.distribution is None or self.distribution.is_main

    def seed(self, seed: int) -> torch.Generator:
        """Seed python, numpy and torch with the stage's thread count and determinism; the seeded generator."""
        return seed_everything(seed, self.threads, self.loaded.base.deterministic)

    def curve(self, path: Path, x: str, y: Sequence[str]) -> Curve | None:
        """The stage's plots file, written by rank 0 alone (None elsewhere)."""
        return Curve(path, x=x, y=tuple(y)) if self.is_main else None

    def run(self, tags: Mapping[str, Any] | None = None, **options: Any) -> AbstractContextManager[Any]:
        """The stage's tracked MLflow run with the cell's ``tags``; under :func:`open_stage` with
        ``distributed_run``, on rank 0 alone (tagged with the world size) and a run that logs nothing elsewhere."""
        if tags is not None:
            options["tags"] = tags
        if self.distribution is not None:
            return tracked_run_on_main(self.distribution, self.task, profile=self.profile, params=self.params,
                                       **options)
        from .tracking import tracked_run
        return tracked_run(self.task, profile=self.profile, params=self.params, **options)


@contextmanager
def open_stage(args: argparse.Namespace, section: str | None, model: type | None, *, cell: GridCell | None = None,
               check: Callable[[Any], object] | None = None, task: str | None = None,
               distributed_run: bool = False) -> Iterator[StageContext]:
    """The stage's context: params section ``section`` of ``args.params`` validated with ``model`` (``None``,
    ``None``: only ``profile`` and ``base``), ``cell`` checked against it, then ``check(section)`` (any further
    refusal before work, such as a method that does not take the cell's group), then (``distributed_run``) the
    torchrun process group, torn down on the way out. ``task`` (default: ``section``) names the MLflow experiment."""
    loaded = load_section(args.params, section, model)
    if cell is not None:
        cell.check(loaded.section)  # a cell outside the grid exits 2 here, before any work
    if check is not None:
        check(loaded.section)
    name = task or section
    if name is None:
        raise TypeError("open_stage: a stage that reads no experiment's section names its MLflow task (task=...)")
    if not distributed_run:
        yield StageContext(args, name, loaded, cell)
        return
    with distributed(loaded.base) as context:
        yield StageContext(args, name, loaded, cell, context)
