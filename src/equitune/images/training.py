"""SGD fine-tuning with model selection on the validation split (never the test split).

The loss is ``cross_entropy`` on raw logits (it applies log-softmax itself: no softmax before it). After every
epoch the validation accuracy is measured on the upright validation images (the training distribution: the rotated
test distribution is never peeked at); the weights of the best epoch are kept (ties: the earlier epoch).

``freeze_batchnorm`` keeps batch-norm layers in eval mode while training (ImageNet running statistics, affine
parameters still learned). Short fine-tuning otherwise trains on batch statistics while the slowly-moving running
statistics (EfficientNet's momentum is 0.01) still describe ImageNet, so evaluation sees a different network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import ImagesTrain
from .data import to_model_input
from .methods import augment_batch

__all__ = ["EpochRecord", "TrainingResult", "accuracy", "autocast_dtype", "predict_logits", "train"]


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


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, resolution: int, batch_size: int, device: torch.device,
                   quarter_turns: int = 0, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits ``[N, K]`` (float32, CPU) of ``images`` rotated by ``quarter_turns`` x 90 degrees, in eval mode."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size], resolution).to(device)
        if quarter_turns:
            x = torch.rot90(x, quarter_turns, dims=(-2, -1))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            chunks.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def accuracy(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == torch.as_tensor(labels)).float().mean())


def set_training_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train(model: nn.Module, data: dict[str, np.ndarray], settings: ImagesTrain, *, resolution: int,
          generator: torch.Generator, device: torch.device, new_parameters: list[nn.Parameter] | None = None,
          augment_rotations: bool = False, eval_batch_size: int = 128,
          on_epoch: Callable[[EpochRecord], None] | None = None, progress: bool = False) -> TrainingResult:
    """Train ``model`` in place on ``data['train_*']``; return the best-validation weights and the curves.

    ``new_parameters`` (the fresh head, lambda-equitune's MLP) train at ``settings.head_lr``; the pretrained rest
    at ``settings.lr``."""
    from tqdm import tqdm

    epochs, batch_size, lr, new_lr = settings.epochs, settings.batch_size, settings.lr, settings.head_lr
    autocast = autocast_dtype(settings, device)
    new_ids = {id(p) for p in (new_parameters or [])}
    pretrained = [p for p in model.parameters() if p.requires_grad and id(p) not in new_ids]
    fresh = [p for p in model.parameters() if p.requires_grad and id(p) in new_ids]
    groups = [{"params": pretrained, "lr": lr}] + ([{"params": fresh, "lr": new_lr or lr}] if fresh else [])
    optimiser = torch.optim.SGD(groups, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    train_x, train_y = data["train_x"], torch.as_tensor(data["train_y"])
    best: TrainingResult | None = None
    history: list[EpochRecord] = []
    for epoch in range(1, epochs + 1):
        set_training_mode(model, settings.freeze_batchnorm)
        order = torch.randperm(len(train_y), generator=generator)
        total, seen = 0.0, 0
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch}/{epochs}", disable=None if progress else True, leave=False):  # None: off when not a TTY
            index = order[start:start + batch_size]
            x = to_model_input(train_x[index.numpy()], resolution)
            if augment_rotations:
                x = augment_batch(x, generator)
            x, y = x.to(device), train_y[index].to(device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = F.cross_entropy(model(x).float(), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        val_logits = predict_logits(model, data["val_x"], resolution, eval_batch_size, device, autocast_dtype=autocast)
        record = EpochRecord(epoch, total / seen, accuracy(val_logits, data["val_y"]))
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if best is None or record.val_accuracy > history[best.best_epoch - 1].val_accuracy:
            best = TrainingResult(copy.deepcopy(model.state_dict()), epoch)
    assert best is not None
    best.history = history
    model.load_state_dict(best.best_state)
    return best
