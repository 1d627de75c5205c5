"""What one image grid cell does, as the functions the stage scripts call: train it, evaluate it.

Every path comes from the caller (dvc.yaml passes them to the stage scripts): a training folder holds
``model.pt`` (best-validation weights) and ``curves.json`` (per-epoch train loss and validation accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError
from ..pipeline.io import read_json
from .backbones import build_classifier
from .cells import Cell
from .config import ImagesParams
from .evaluation import evaluate_rotations
from .methods import build_method, method_group, new_parameters
from .training import EpochRecord, autocast_dtype, train

__all__ = ["CHECKPOINT", "CURVES", "build_cell_model", "evaluate_cell", "train_cell"]

CHECKPOINT = "model.pt"
CURVES = "curves.json"


def build_cell_model(params: ImagesParams, cell: Cell, num_classes: int, pretrained: bool) -> tuple:
    """(model the method trains, the classifier inside it)."""
    classifier = build_classifier(cell.backbone, num_classes, params.resolution, pretrained)
    model = build_method(cell.method, cell.group, classifier, params.train.lambda_hidden, params.train.equizero_proxy)
    return model, classifier


def train_cell(params: ImagesParams, cell: Cell, data: dict[str, np.ndarray], num_classes: int,
               generator: torch.Generator, device: torch.device,
               on_epoch: Callable[[EpochRecord], None] | None = None) -> tuple[dict, dict]:
    """Fine-tune the cell's model; (best-validation state dict, curves)."""
    method_group(cell.method, cell.group)
    model, classifier = build_cell_model(params, cell, num_classes, params.train.pretrained)
    model.to(device)
    result = train(model, data, params.train, resolution=params.resolution, generator=generator, device=device,
                   new_parameters=new_parameters(model, classifier),
                   augment_rotations=cell.method == "finetune_augment",
                   eval_batch_size=params.evaluation.batch_size, on_epoch=on_epoch, progress=True)
    curves = {
        "best_epoch": result.best_epoch,
        "epochs": [{"epoch": r.epoch, "train_loss": r.train_loss, "val_accuracy": r.val_accuracy}
                   for r in result.history],
    }
    return result.best_state, curves


def evaluate_cell(params: ImagesParams, cell: Cell, model_dir: str | Path, data: dict[str, np.ndarray],
                  classes: tuple[str, ...], device: torch.device) -> dict:
    """Every test metric of the cell's trained model, and its training curve (the cell's metrics file)."""
    group = method_group(cell.method, cell.group)
    checkpoint = Path(model_dir) / CHECKPOINT
    if not checkpoint.exists():
        raise DataError(f"{checkpoint} not found; run the training stage of {cell.name} first")
    model, _ = build_cell_model(params, cell, len(classes), pretrained=False)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.to(device).eval()
    # The rotation group the test set uses (c4) and, when different, the model's own group.
    invariance_groups = ("c4",) + ((group,) if group not in ("c4", "trivial") else ())
    metrics = evaluate_rotations(
        model, data["test_x"], data["test_y"], classes, resolution=params.resolution,
        batch_size=params.evaluation.batch_size, rotation_seed=params.evaluation.rotation_seed,
        invariance_batch=params.evaluation.invariance_batch, groups=invariance_groups, device=device,
        autocast_dtype=autocast_dtype(params.train, device),
    )
    curves = read_json(Path(model_dir) / CURVES)
    metrics["training"] = {
        "best_epoch": curves["best_epoch"],
        "curve": {f"epoch{r['epoch']}": {"train_loss": r["train_loss"], "val_accuracy": r["val_accuracy"]}
                  for r in curves["epochs"]},
    }
    return metrics
