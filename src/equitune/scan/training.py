"""Training loops of the SCAN experiment: padded, masked mini-batches; pretraining and (equi/equizero-)tuning.

- :func:`train_steps`: the loop itself, a function of the model, the optimizer and a batch sampler (so that a
  distributed wrapper and a per-rank sampler can be passed in without rewriting it).
- :func:`pretrain`: the non-equivariant model, teacher forcing decided once per sequence, gradient clipping,
  Adam with a constant, cosine or one-cycle schedule; validation exact-match accuracy every
  ``validate_every_examples``; the best-validation weights are kept.
- :func:`tune`: continue training a wrapped model (core ``EquiTune`` or ``EquiZero``, the |G| copies in one
  batch) with full teacher forcing, calling back at the requested step counts so curves can be measured.
Lengths are counted in examples seen, so the paper's "200k iterations of batch 1" is ``examples: 200000``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..core.proxies import ProxyScore
from ..pipeline.distributed import DistributedContext, unwrapped
from .config import ScanPretrain, ScanTune
from .data import Pair, input_vocabulary, output_vocabulary
from .decoding import EOS_ID, SOS_ID
from .model import PAD_ID

__all__ = ["EncodedPairs", "batch_order", "encode_pairs", "global_batch_denominator", "lines_in", "lr_scheduler",
           "make_batch", "mean_target_length", "pretrain", "sequence_loss", "shard_loss", "train_steps", "tune"]


@dataclass(frozen=True)
class EncodedPairs:
    src: torch.Tensor  # [N, S] command ids, padded with 0
    targets: torch.Tensor  # [N, L] action ids followed by <eos>, padded with 0
    target_lists: tuple[tuple[int, ...], ...]  # the same, unpadded (exact-match references)

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def target_lengths(self) -> torch.Tensor:
        return (self.targets != PAD_ID).sum(dim=1)


def lines_in(part: EncodedPairs, reference: EncodedPairs) -> list[bool]:
    """Per line of ``part``: does the same (command, actions) pair occur in ``reference``?"""
    def key(data: EncodedPairs, row: int) -> tuple:
        command = tuple(t for t in data.src[row].tolist() if t != PAD_ID)
        return command, data.target_lists[row]

    known = {key(reference, row) for row in range(len(reference))}
    return [key(part, row) in known for row in range(len(part))]


def encode_pairs(pairs: Sequence[Pair]) -> EncodedPairs:
    in_ids = {w: i for i, w in enumerate(input_vocabulary())}
    out_ids = {w: i for i, w in enumerate(output_vocabulary())}
    sources = [[in_ids[w] for w in command.split()] for command, _ in pairs]
    targets = [tuple(out_ids[a] for a in actions.split()) + (EOS_ID,) for _, actions in pairs]
    src = torch.zeros(len(pairs), max(map(len, sources)), dtype=torch.long)
    tgt = torch.zeros(len(pairs), max(map(len, targets)), dtype=torch.long)
    for row, (s, t) in enumerate(zip(sources, targets, strict=True)):
        src[row, : len(s)] = torch.tensor(s)
        tgt[row, : len(t)] = torch.tensor(t)
    return EncodedPairs(src, tgt, tuple(targets))


def make_batch(data: EncodedPairs, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(src, decoder inputs ``<sos> y...``, targets ``y... <eos>``), trimmed to the batch's longest rows."""
    src, targets = data.src[index], data.targets[index]
    src = src[:, : int((src != PAD_ID).sum(1).max())]
    targets = targets[:, : int((targets != PAD_ID).sum(1).max())]
    decoder_inputs = torch.cat([torch.full_like(targets[:, :1], SOS_ID), targets[:, :-1]], dim=1)
    decoder_inputs = decoder_inputs.masked_fill(decoder_inputs == EOS_ID, PAD_ID)  # nothing is fed after <eos>
    return src, decoder_inputs, targets


def sequence_loss(log_probs: torch.Tensor, targets: torch.Tensor, weighting: str = "batch_mean",
                  mean_target_length: float | None = None) -> torch.Tensor:
    """Negative log-likelihood of the real (non-padding) target tokens.

    ``batch_mean``: the mean over the batch's tokens, so every batch counts the same; with length-bucketed batches
    a token of a long target then counts less than a token of a short one. ``token``: the batch's sum divided by
    ``batch size * mean_target_length`` (the training set's mean), so every target token of the data counts the
    same, as with batch 1 and a loss summed over the target (the reference's), at the usual scale of about one
    token's loss."""
    flat_log_probs, flat_targets = log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1)
    if weighting == "batch_mean":
        return F.nll_loss(flat_log_probs, flat_targets, ignore_index=PAD_ID)
    if weighting == "token":
        if mean_target_length is None or mean_target_length <= 0:
            raise ValueError("loss weighting 'token' needs the training set's mean target length (> 0)")
        total = F.nll_loss(flat_log_probs, flat_targets, ignore_index=PAD_ID, reduction="sum")
        return total / (targets.shape[0] * mean_target_length)
    raise ValueError(f"unknown loss weighting {weighting!r}; allowed: batch_mean, token")


def batch_order(lengths: torch.Tensor, batch_size: int, steps: int, generator: torch.Generator,
                bucket_batches: int = 16):
    """``steps`` index batches drawn epoch by epoch from seeded permutations.

    The decoder runs as many steps as the longest target in a batch, so within each run of ``bucket_batches``
    batches the examples are sorted by target length before being cut into batches (the batches are then
    shuffled): every example is still seen once per epoch, at a fraction of the padded steps.
    ``bucket_batches=1`` gives plain random batches.
    """
    size = lengths.shape[0]
    produced = 0
    while produced < steps:
        order = torch.randperm(size, generator=generator)
        batches = []
        span = batch_size * bucket_batches
        for start in range(0, size, span):
            chunk = order[start:start + span]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        for position in torch.randperm(len(batches), generator=generator).tolist():
            if produced == steps:
                return
            yield batches[position]
            produced += 1


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[torch.Tensor],
                loss_of: Callable[[nn.Module, torch.Tensor], torch.Tensor], *, grad_clip: float,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                after_step: Callable[[int, float], None] | None = None, desc: str = "train",
                total: int | None = None) -> int:
    """The training loop: one optimizer step per index batch that ``batches`` (the batch sampler) yields.

    ``loss_of(model, index)`` builds the batch and returns its loss; gradients are clipped to ``grad_clip``;
    ``after_step(step, loss)`` runs after each step (validation, curve points). Everything distributed training
    changes comes in through the arguments (a wrapped ``model``, a per-rank sampler), not through this loop.
    Returns the number of steps taken."""
    progress = tqdm(total=total, desc=desc, unit="batch", disable=None)
    step = 0
    for step, index in enumerate(batches, 1):
        model.train()
        loss = loss_of(model, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = float(loss.detach())
        progress.update()
        progress.set_postfix(loss=f"{value:.3f}")
        if after_step is not None:
            after_step(step, value)
    progress.close()
    return step


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float, steps: int,
                 warmup_fraction: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``constant`` (None), ``linear`` or ``cosine`` (from ``lr`` to 0 by the last step) or ``one_cycle`` (torch's
    OneCycleLR: warm-up from lr/25 to ``lr`` over ``warmup_fraction`` of the steps, cosine annealing to lr/25000,
    Adam's beta1 cycled between 0.95 and 0.85)."""
    if schedule == "constant":
        return None
    if schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    if schedule == "one_cycle":
        if steps < 2:
            return None  # OneCycleLR needs two steps; one step at `lr` is the only sensible reading
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup_fraction,
                                                   anneal_strategy="cos", div_factor=25.0, final_div_factor=1e3)
    raise ValueError(f"unknown lr_schedule {schedule!r}; allowed: constant, linear, cosine, one_cycle")


def mean_target_length(data: EncodedPairs) -> float:
    return float(data.target_lengths.float().mean())


def global_batch_denominator(train: EncodedPairs, index: torch.Tensor, weighting: str,
                             mean_target_length: float) -> float:
    """What :func:`sequence_loss` divides the global batch ``index``'s summed token loss by (the same on every
    rank, since every rank knows the whole global batch)."""
    if weighting == "token":
        return len(index) * mean_target_length
    if weighting == "batch_mean":
        return float((train.targets[index] != PAD_ID).sum())
    raise ValueError(f"unknown loss weighting {weighting!r}; allowed: batch_mean, token")


def shard_loss(log_probs: torch.Tensor, targets: torch.Tensor, denominator: float, world_size: int) -> torch.Tensor:
    """One rank's share of the global batch's loss, scaled so that DDP's average of the ranks' gradients is the
    gradient of the global batch's loss: the shard's summed token loss over the *global* denominator, times the
    number of ranks. A shard's own mean would weight a token by its shard's length (wrong for ``batch_mean``, and
    for uneven shards)."""
    flat_log_probs, flat_targets = log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1)
    total = F.nll_loss(flat_log_probs, flat_targets, ignore_index=PAD_ID, reduction="sum")
    return total * (world_size / denominator)


def pretrain(model: nn.Module, train: EncodedPairs, evaluate: Callable[[nn.Module], float], settings: ScanPretrain, *,
             generator: torch.Generator, on_validation: Callable[[int, float, float], None] | None = None,
             device: torch.device | None = None, context: DistributedContext | None = None
             ) -> tuple[dict, float, int]:
    """Train; returns (best-validation state dict, its validation accuracy, examples seen when it was reached).

    Validation (``evaluate(model)``, exact-match accuracy) runs every ``validate_every_examples`` and after the
    last step; the weights of the best validation so far are kept (validation only, never the test split).

    Under torchrun (``context`` distributed, ``model`` inside DistributedDataParallel) every rank draws the same
    global batches and teacher-forcing decisions from ``generator`` and trains on its share of each; rank 0 alone
    validates (on the unwrapped model) and tells the others the score, so every rank keeps the same best step.
    Dropout masks are drawn per rank, so only a model without dropout trains exactly as one process does."""
    device = torch.device("cpu") if device is None else device
    sharded = context is not None and context.is_distributed
    net = unwrapped(model)  # validation and the kept weights: the model itself, not the DDP wrapper
    batch_size = settings.batch_size
    steps = math.ceil(settings.examples / batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = lr_scheduler(optimizer, settings.lr_schedule, settings.lr, steps, settings.warmup_fraction)
    validate_every = max(1, round(settings.validate_every_examples / batch_size))
    mean_length = mean_target_length(train)
    best = {"state": copy.deepcopy(net.state_dict()), "accuracy": -1.0, "at": 0}
    running = {"loss": 0.0, "steps": 0, "seen": 0}

    def loss_of(wrapped: nn.Module, index: torch.Tensor) -> torch.Tensor:
        if sharded:
            return shard_loss_of(wrapped, index)
        src, decoder_inputs, targets = (t.to(device) for t in make_batch(train, index))
        forcing = None
        if settings.teacher_forcing < 1:
            forcing = (torch.rand(len(index), generator=generator) < settings.teacher_forcing).to(device)
        running["seen"] += len(index)
        return sequence_loss(wrapped(src, decoder_inputs, forcing), targets, settings.loss_weighting, mean_length)

    def shard_loss_of(wrapped: nn.Module, index: torch.Tensor) -> torch.Tensor:
        # The random draws are made for the whole global batch on every rank, then cut like the batch itself.
        forcing = None
        if settings.teacher_forcing < 1:
            forcing = torch.rand(len(index), generator=generator) < settings.teacher_forcing
        positions, _ = context.local_share(torch.arange(len(index)))
        src, decoder_inputs, targets = (t.to(device) for t in make_batch(train, index[positions]))
        if forcing is not None:
            forcing = forcing[positions].to(device)
        running["seen"] += len(index)
        denominator = global_batch_denominator(train, index, settings.loss_weighting, mean_length)
        return shard_loss(wrapped(src, decoder_inputs, forcing), targets, denominator, context.world_size)

    def after_step(step: int, loss: float) -> None:
        running["loss"] += context.mean(loss) if sharded else loss  # the global batch's loss
        running["steps"] += 1
        if step % validate_every == 0 or step == steps:
            net.eval()
            accuracy = evaluate(net) if context is None or context.is_main else None
            if sharded:
                accuracy = context.from_main(accuracy)
            mean_loss = running["loss"] / running["steps"]
            running.update(loss=0.0, steps=0)
            if on_validation:
                on_validation(running["seen"], mean_loss, accuracy)
            if accuracy > best["accuracy"]:
                best.update(state=copy.deepcopy(net.state_dict()), accuracy=accuracy, at=running["seen"])

    batches = batch_order(train.target_lengths, batch_size, steps, generator, settings.bucket_batches)
    train_steps(model, optimizer, batches, loss_of, grad_clip=settings.grad_clip, scheduler=scheduler,
                after_step=after_step, desc="pretrain", total=steps)
    return best["state"], best["accuracy"], best["at"]


def tune(wrapper: nn.Module, train: EncodedPairs, settings: ScanTune, *, lr: float, steps: int,
         checkpoints: Sequence[int], generator: torch.Generator, on_checkpoint: Callable[[int], None],
         proxy: ProxyScore | None = None, device: torch.device | None = None, desc: str = "equitune") -> None:
    """``steps`` of teacher-forced training of a group wrapper at ``lr`` (the split's); ``on_checkpoint(step)`` runs
    (in eval mode) at each of ``checkpoints``. ``proxy`` (equizero's) gets each batch's padding mask before the
    forward pass."""
    device = torch.device("cpu") if device is None else device
    wanted = sorted(set(checkpoints))
    if wanted and (wanted[0] < 0 or wanted[-1] > steps):
        raise ValueError(f"checkpoint steps must lie in [0, {steps}]; got {wanted}")
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=lr, weight_decay=settings.weight_decay)
    scheduler = lr_scheduler(optimizer, settings.lr_schedule, lr, steps)
    mean_length = mean_target_length(train)

    def loss_of(net: nn.Module, index: torch.Tensor) -> torch.Tensor:
        src, decoder_inputs, targets = (t.to(device) for t in make_batch(train, index))
        if proxy is not None:
            proxy.mask = targets != PAD_ID
        return sequence_loss(net(src, decoder_inputs), targets, settings.loss_weighting, mean_length)

    def checkpoint(step: int, loss: float | None = None) -> None:
        if step in wanted:
            wrapper.eval()
            on_checkpoint(step)

    checkpoint(0)
    batches = batch_order(train.target_lengths, settings.batch_size, steps, generator, settings.bucket_batches)
    train_steps(wrapper, optimizer, batches, loss_of, grad_clip=settings.grad_clip, scheduler=scheduler,
                after_step=checkpoint, desc=desc, total=steps)
