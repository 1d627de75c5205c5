"""SGD fine-tuning with model selection on the validation split (never the test split).

:func:`fit` is the training loop, independent of what a batch holds: it takes the model, the optimizer, a batch
sampler (an iterable of index tensors, one pass = one epoch, e.g. :class:`ShuffledBatches`) and a function that
loads the batch of those indices. Images transformed on the fly (:class:`ImageBatches`) and cached orbits of a
frozen lower part (:class:`OrbitBatches`) are two loaders; a distributed run would pass a sharded sampler and a
``DistributedDataParallel`` model to the same loop.

The loss is ``cross_entropy`` on raw logits (it applies log-softmax itself: no softmax before it). After every
epoch the validation accuracy is measured on the upright validation images (the training distribution: the rotated
test distribution is never peeked at); the weights of the best epoch are kept (ties: the earlier epoch).

``freeze_batchnorm`` keeps batch-norm layers in eval mode while training (ImageNet running statistics, affine
parameters still learned). Short fine-tuning otherwise trains on batch statistics while the slowly-moving running
statistics (EfficientNet's momentum is 0.01) still describe ImageNet, so evaluation sees a different network.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..pipeline.distributed import DistributedContext, unwrapped
from ..pipeline.modes import eval_mode
from .config import ImagesTrain
from .data import to_model_input
from .methods import augment_batch, augment_orbits

__all__ = ["EpochRecord", "ImageBatches", "OrbitBatches", "ShuffledBatches", "TrainingResult", "accuracy",
           "autocast_dtype", "fit", "load_share", "make_optimizer", "make_scheduler", "predict", "set_training_mode"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float


@dataclass
class TrainingResult:
    best_state: dict
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)


def autocast_dtype(settings: ImagesTrain, device: torch.device) -> torch.dtype | None:
    """bfloat16 (else float16) autocast when mixed precision is asked for on CUDA; None (full precision) on CPU."""
    if settings.mixed_precision and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


class ShuffledBatches:
    """The batch sampler: each pass (epoch) is a fresh permutation of ``range(size)`` from ``generator``, cut into
    index tensors of ``batch_size`` (the last one shorter)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        if size < 1 or batch_size < 1:
            raise ValueError(f"need at least one example and a positive batch size; got {size}, {batch_size}")
        self.size, self.batch_size, self.generator = size, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator)
        return iter(order.split(self.batch_size))


class ImageBatches:
    """Loads training images by index: uint8 -> float at ``resolution``, rotated at random for the augmentation
    baseline (``augment``: the generator of those draws)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resolution: int, device: torch.device,
                 augment: torch.Generator | None = None):
        self.images, self.labels = images, torch.as_tensor(labels)
        self.resolution, self.device, self.augment = resolution, device, augment
        self.draws_randoms = augment is not None  # per example: a distributed rank must load the whole batch

    def __call__(self, index: torch.Tensor) -> Batch:
        x = to_model_input(self.images[index.numpy()], self.resolution)
        if self.augment is not None:
            x = augment_batch(x, self.augment)
        return x.to(self.device), self.labels[index].to(self.device)


class OrbitBatches:
    """Loads cached D4 orbits by index (:mod:`equitune.images.cached`); for the augmentation baseline each orbit
    is moved by a random rotation, i.e. becomes the orbit of the rotated image."""

    def __init__(self, orbits: torch.Tensor, labels: np.ndarray, device: torch.device,
                 augment: torch.Generator | None = None):
        self.orbits, self.labels = orbits, torch.as_tensor(labels)
        self.device, self.augment = device, augment
        self.draws_randoms = augment is not None  # per example: a distributed rank must load the whole batch

    def __call__(self, index: torch.Tensor) -> Batch:
        z = self.orbits[index]
        if self.augment is not None:
            z = augment_orbits(z, self.augment)
        return z.to(self.device), self.labels[index].to(self.device)


def make_optimizer(model: nn.Module, settings: ImagesTrain, new_parameters: Iterable[nn.Parameter] = ()
                   ) -> torch.optim.Optimizer:
    """SGD with momentum; ``new_parameters`` (the fresh head, lambda-equitune's MLP) at ``settings.head_lr``, the
    pretrained rest at ``settings.lr``. Parameters with ``requires_grad=False`` are left out."""
    new_ids = {id(p) for p in new_parameters}
    pretrained = [p for p in model.parameters() if p.requires_grad and id(p) not in new_ids]
    fresh = [p for p in model.parameters() if p.requires_grad and id(p) in new_ids]
    groups = [{"params": pretrained, "lr": settings.lr}] if pretrained else []
    groups += [{"params": fresh, "lr": settings.head_lr or settings.lr}] if fresh else []
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: ImagesTrain, steps: int):
    """Per-step learning-rate schedule: ``constant``, or ``cosine`` decay to 0 over the whole run."""
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    return None


def set_training_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def predict(model: nn.Module, inputs, batch_size: int, prepare: Callable[[object], torch.Tensor] | None = None,
            device: torch.device | None = None, autocast: torch.dtype | None = None) -> torch.Tensor:
    """Outputs ``[N, ...]`` (on the CPU, in the model's dtype; float32 under autocast) of ``model`` on ``inputs`` in eval mode, ``batch_size`` at a time;
    ``prepare`` turns a slice of ``inputs`` into the model's input (e.g. uint8 images -> floats)."""
    device = device or torch.device("cpu")
    chunks = []
    with eval_mode(model):
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            x = (prepare(x) if prepare is not None else x).to(device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = model(x)
            chunks.append((out.float() if autocast is not None else out).cpu())
    return torch.cat(chunks)


def accuracy(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == torch.as_tensor(labels)).float().mean())


def load_share(load_batch: Callable[[torch.Tensor], Batch], index: torch.Tensor, context: DistributedContext
               ) -> tuple[Batch, float]:
    """This rank's share of the global batch ``index`` and the weight of its mean loss
    (:meth:`DistributedContext.local_share`). A loader that draws random numbers per example (the augmentation
    baseline) loads the whole global batch, so that every rank draws what one process would, and keeps its share."""
    positions, weight = context.local_share(torch.arange(len(index)))
    if getattr(load_batch, "draws_randoms", False):
        x, y = load_batch(index)
        return (x[positions.to(x.device)], y[positions.to(y.device)]), weight
    return load_batch(index[positions]), weight


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[torch.Tensor],
        load_batch: Callable[[torch.Tensor], Batch], *, epochs: int, validate: Callable[[nn.Module], float],
        freeze_batchnorm: bool = True, scheduler=None, autocast: torch.dtype | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None, progress: bool = False,
        context: DistributedContext | None = None,
        regulariser: Callable[[torch.Tensor], torch.Tensor] | None = None) -> TrainingResult:
    """Train ``model`` in place for ``epochs`` passes over ``batches``; keep the weights of the epoch with the best
    ``validate(model)`` (ties: the earlier epoch) and return them with the curves. ``scheduler`` steps per batch.

    Under torchrun (``context`` distributed, ``model`` inside DistributedDataParallel) ``batches`` yields the same
    global batches on every rank; each rank trains on its share (:func:`load_share`), rank 0 alone validates the
    unwrapped model and tells the others the score, so every rank keeps the same best epoch; the recorded train
    loss is the global one (the cross-entropy alone: ``regulariser(x)``, e.g. a canonicalizer's prior, is added to
    the loss that is minimised but not to the recorded one)."""
    from tqdm import tqdm

    sharded = context is not None and context.is_distributed
    net = unwrapped(model)  # validation and the kept weights: the model itself, not the DDP wrapper
    best: TrainingResult | None = None
    history: list[EpochRecord] = []
    for epoch in range(1, epochs + 1):
        set_training_mode(model, freeze_batchnorm)
        total = torch.zeros(())
        seen = 0
        for index in tqdm(batches, desc=f"epoch {epoch}/{epochs}", disable=None if progress else True, leave=False):
            weight = None
            if sharded:
                (x, y), weight = load_share(load_batch, index, context)
            else:
                x, y = load_batch(index)
            device_type = x.device.type
            with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
                loss = F.cross_entropy(model(x).float(), y)
                objective = loss if regulariser is None else loss + regulariser(x).float()
            optimizer.zero_grad(set_to_none=True)
            (objective if weight is None else objective * weight).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach().cpu() * len(y)
            seen += len(y)
        train_loss = _global_sum(total, context) / _global_sum(seen, context) if sharded else float(total) / seen
        score = validate(net) if context is None or context.is_main else None
        record = EpochRecord(epoch, train_loss, context.from_main(score) if sharded else score)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if best is None or record.val_accuracy > history[best.best_epoch - 1].val_accuracy:
            best = TrainingResult(copy.deepcopy(net.state_dict()), epoch)
    if best is None:
        raise ValueError("epochs must be at least 1")
    best.history = history
    net.load_state_dict(best.best_state)
    return best


def _global_sum(value: float | torch.Tensor, context: DistributedContext) -> float:
    return context.mean(value) * context.world_size
