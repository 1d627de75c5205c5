"""Training loops of the SCAN experiment: padded, masked mini-batches; pretraining and (equi/equizero-)tuning.

- :func:`pretrain`: the non-equivariant model, teacher forcing decided once per sequence, gradient clipping,
  Adam; validation exact-match accuracy every ``validate_every_examples``; the best-validation weights are kept.
- :func:`tune`: continue training a wrapped model (core ``EquiTune`` or ``EquiZero``, the |G| copies in one
  batch) with full teacher forcing, calling back at the requested step counts so curves can be measured.
Lengths are counted in examples seen, so the paper's "200k iterations of batch 1" is ``examples: 200000``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..core.proxies import ProxyScore
from .config import ScanPretrain, ScanTune
from .data import Pair, input_vocabulary, output_vocabulary
from .decoding import EOS_ID, SOS_ID
from .model import PAD_ID

__all__ = ["EncodedPairs", "encode_pairs", "make_batch", "sequence_loss", "pretrain", "tune", "batch_order"]


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


def sequence_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the real (non-padding) target tokens."""
    return F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID)


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


def pretrain(model: nn.Module, train: EncodedPairs, evaluate: Callable[[nn.Module], float], settings: ScanPretrain, *,
             generator: torch.Generator, on_validation: Callable[[int, float, float], None] | None = None,
             device: torch.device | None = None) -> tuple[dict, float, int]:
    """Train; returns (best-validation state dict, its validation accuracy, examples seen when it was reached).

    ``settings.lr_schedule``: ``constant``, or ``cosine`` (lr decays from ``lr`` to 0 by the last step)."""
    device = torch.device("cpu") if device is None else device
    examples, batch_size, lr, lr_schedule = settings.examples, settings.batch_size, settings.lr, settings.lr_schedule
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(examples / batch_size)
    if lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    elif lr_schedule == "constant":
        scheduler = None
    else:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; allowed: constant, cosine")
    validate_every = max(1, round(settings.validate_every_examples / batch_size))
    best_state, best_accuracy, best_at = copy.deepcopy(model.state_dict()), -1.0, 0
    running, seen = 0.0, 0
    progress = tqdm(total=steps, desc="pretrain", unit="batch", disable=None)
    batches = batch_order(train.target_lengths, batch_size, steps, generator, settings.bucket_batches)
    for step, index in enumerate(batches, 1):
        model.train()
        src, decoder_inputs, targets = (t.to(device) for t in make_batch(train, index))
        forcing = torch.rand(len(index), generator=generator) < settings.teacher_forcing
        loss = sequence_loss(model(src, decoder_inputs, forcing.to(device)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen += len(index)
        running += float(loss.detach())
        progress.update()
        if step % validate_every == 0 or step == steps:
            model.eval()
            accuracy = evaluate(model)
            mean_loss = running / (validate_every if step % validate_every == 0 else step % validate_every)
            running = 0.0
            progress.set_postfix(loss=f"{mean_loss:.3f}", val_acc=f"{accuracy:.3f}")
            if on_validation:
                on_validation(seen, mean_loss, accuracy)
            if accuracy > best_accuracy:
                best_state, best_accuracy, best_at = copy.deepcopy(model.state_dict()), accuracy, seen
    progress.close()
    return best_state, best_accuracy, best_at


def tune(wrapper: nn.Module, train: EncodedPairs, settings: ScanTune, *, lr: float, generator: torch.Generator,
         on_checkpoint: Callable[[int], None], proxy: ProxyScore | None = None,
         device: torch.device | None = None, desc: str = "equitune") -> None:
    """Teacher-forced training of a group wrapper; ``on_checkpoint(step)`` runs (in eval mode) at each step of
    ``settings.curve_steps``. ``proxy`` (equizero's) gets each batch's padding mask before the forward pass."""
    device = torch.device("cpu") if device is None else device
    steps, batch_size = settings.steps, settings.batch_size
    wanted = sorted(set(settings.curve_steps))
    if wanted and (wanted[0] < 0 or wanted[-1] > steps):
        raise ValueError(f"checkpoint steps must lie in [0, {steps}]; got {wanted}")
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=lr, weight_decay=settings.weight_decay)

    def checkpoint(step: int) -> None:
        if step in wanted:
            wrapper.eval()
            on_checkpoint(step)

    checkpoint(0)
    progress = tqdm(total=steps, desc=desc, unit="batch", disable=None)
    batches = batch_order(train.target_lengths, batch_size, steps, generator, settings.bucket_batches)
    for step, index in enumerate(batches, 1):
        wrapper.train()
        src, decoder_inputs, targets = (t.to(device) for t in make_batch(train, index))
        if proxy is not None:
            proxy.mask = targets != PAD_ID
        loss = sequence_loss(wrapper(src, decoder_inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(wrapper.parameters(), settings.grad_clip)
        optimizer.step()
        progress.update()
        progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        checkpoint(step)
    progress.close()
