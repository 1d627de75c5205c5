"""Data-parallel training under torchrun: one process per device, gradients averaged by DistributedDataParallel.

- :func:`distributed` opens the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on GPU, each rank on the device
  :func:`~equitune.pipeline.stage.resolve_device` gives it. Started without torchrun it is a one-process context
  with the same interface, so a stage has one code path. The group is torn down on the way out, also on errors.
- :meth:`DistributedContext.local_share`: every rank draws the same seeded order of *global* batches and takes a
  contiguous share of each, with the weight that makes DDP's average over ranks the global batch's mean loss (an
  uneven split included), so N processes take the same steps as one process with the same global batch and seed
  (up to the summation order of floats).
- Rank 0 alone logs, checkpoints and writes metrics: :attr:`DistributedContext.is_main`, and
  :func:`tracked_run_on_main`, which opens the MLflow run on rank 0 and hands the other ranks a run that logs
  nothing.
- :meth:`DistributedContext.shard` / :meth:`DistributedContext.gather` split a list of work items (prompts)
  across ranks and put the results back in the original order on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import ConfigError
from .schema import BaseParams
from .stage import resolve_device

__all__ = ["DistributedContext", "NullRun", "distributed", "torchrun_ranks", "tracked_run_on_main", "unwrapped"]

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment; None when not started by torchrun.

    A partial or inconsistent environment (some variables set by hand, a rank outside the world) is an error
    rather than a silent single-process run that would write the same outputs from every process.
    """
    environ = os.environ if environ is None else environ
    present = {name: environ.get(name, "") for name in TORCHRUN_VARIABLES}
    if not any(present[name] for name in ("RANK", "WORLD_SIZE")):
        return None
    missing = [name for name, value in present.items() if not value]
    if missing:
        raise ConfigError(f"incomplete torch.distributed environment: {', '.join(missing)} not set; start the stage "
                          "with torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or "
                          "unset RANK and WORLD_SIZE for a single process")
    numbers = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if not present[name].isdigit():
            raise ConfigError(f"{name}={present[name]!r} is not a non-negative integer")
        numbers[name] = int(present[name])
    rank, world, local = numbers["RANK"], numbers["WORLD_SIZE"], numbers["LOCAL_RANK"]
    if world < 1 or rank >= world or local > rank:
        raise ConfigError(f"inconsistent torch.distributed environment: RANK={rank}, WORLD_SIZE={world}, "
                          f"LOCAL_RANK={local} (need 0 <= LOCAL_RANK <= RANK < WORLD_SIZE)")
    return rank, world, local


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, checkpoints and writes outputs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    def wrap(self, model: nn.Module, **ddp_options: Any) -> nn.Module:
        """``model`` on this rank's device, inside DistributedDataParallel when there are several processes.

        DDP broadcasts rank 0's parameters and buffers when it wraps, so every replica starts identical.
        """
        model = model.to(self.device)
        if not self.is_distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_options)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (sizes differ by at most one; a rank may get none)."""
        start, stop = _shard_bounds(len(items), self.rank, self.world_size)
        return list(items[start:stop])

    def local_share(self, global_batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's contiguous share of a global batch of indices (any batch order that is the same on every
        rank), and the factor its mean loss must be multiplied by so that DDP's average over ranks is the global
        batch's mean loss: ``len(share) * world_size / len(global_batch)`` (1 when the batch splits evenly)."""
        size = len(global_batch)
        if size < self.world_size:
            raise ConfigError(f"a global batch of {size} example(s) cannot give each of {self.world_size} processes "
                              "one: use a larger batch size or fewer processes")
        start, stop = _shard_bounds(size, self.rank, self.world_size)
        return global_batch[start:stop], (stop - start) * self.world_size / size

    def gather(self, shard: Sequence[T]) -> list[T]:
        """Every rank's :meth:`shard` results, concatenated in rank order: the original order, on every rank."""
        if not self.is_distributed:
            return list(shard)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(shard))
        return [item for part in parts for item in part]

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a validation score measured on rank 0 alone, so that every rank keeps
        the same best step); ``value`` itself in a single process."""
        if not self.is_distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reseed_stochastic_layers(self, seed: int) -> None:
        """Give ranks other than 0 their own stream of torch's global generator (dropout, drop-connect masks).

        Seeded alike, every rank would draw the same masks for its share, so the i-th example of each share would
        get the same mask. Shared draws (batch order, teacher forcing, augmentation) come from the stage's explicit
        generator, which stays the same on every rank; rank 0 and a single process keep ``seed``."""
        if self.is_distributed and self.rank:
            # torch's CPU generator keeps 32 bits of a seed: mix (seed, rank) into 32 well-spread bits.
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def check_batches(self, batch_size: int, num_examples: int | None = None, what: str = "batch_size") -> None:
        """A :class:`ConfigError` before any work when a global batch (or the epoch's last, shorter one, when
        ``num_examples`` is given) has fewer examples than there are processes: some rank would get none."""
        smallest = batch_size
        if num_examples is not None and num_examples % batch_size:
            smallest = min(batch_size, num_examples % batch_size)
        if smallest < self.world_size:
            last = "" if smallest == batch_size else f" (the last batch of an epoch of {num_examples} has {smallest})"
            raise ConfigError(f"{what}={batch_size}{last} cannot give each of the {self.world_size} processes "
                              f"(WORLD_SIZE) an example: use a batch size of at least {self.world_size} whose "
                              "last batch is not smaller, or fewer processes (torchrun --nproc_per_node)")

    def mean(self, value: float | torch.Tensor) -> float:
        """The average of a per-rank scalar over the ranks (the global-batch loss, from equal shards' losses)."""
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().clone()
        if self.is_distributed:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return float(tensor)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise): what validation decodes
    and checkpoints save. A type check, not ``getattr(model, "module")``: wrapped models of this package have
    submodules named ``module``."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@contextmanager
def distributed(base: BaseParams, environ: Mapping[str, str] | None = None,
                timeout: timedelta = timedelta(minutes=30)) -> Iterator[DistributedContext]:
    """The process group of a torchrun job (or a one-process context), torn down on the way out.

    The device comes from ``base.device`` and ``LOCAL_RANK`` (see :func:`~equitune.pipeline.stage.select_device`):
    a rank without a device of its own is a :class:`ConfigError` before the group is formed.
    """
    environ = os.environ if environ is None else environ
    ranks = torchrun_ranks(environ)
    device = resolve_device(base, environ)
    if ranks is None or ranks[1] == 1:
        rank, world, local = ranks or (0, 1, 0)
        yield DistributedContext(rank, world, local, device, backend=None)
        return
    rank, world, local = ranks
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    context = DistributedContext(rank, world, local, device, backend)
    try:
        yield context
        # Nobody leaves while another rank may still be in a collective (a gather, a last all-reduce).
        dist.barrier()
    finally:
        dist.destroy_process_group()


class NullRun:
    """What ranks other than 0 get instead of an MLflow run: every logging call does nothing."""

    run_id = None

    def log_params(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_final(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_artifact(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_tags(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def tracked_run_on_main(context: DistributedContext, task: str, **kwargs: Any) -> Iterator[Any]:
    """:func:`~equitune.pipeline.tracking.tracked_run` on rank 0 (tagged with the world size); a
    :class:`NullRun` elsewhere, so that a job of N processes makes one MLflow run, not N."""
    if not context.is_main:
        yield NullRun()
        return
    from .tracking import tracked_run
    tags = {**(kwargs.pop("tags", None) or {}), "world_size": context.world_size}
    if context.is_distributed:
        tags["ddp.backend"] = context.backend
    with tracked_run(task, tags=tags, **kwargs) as run:
        yield run
