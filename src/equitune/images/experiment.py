"""What the image stages do, as the functions the stage scripts call: cache the frozen part's orbits of a dataset,
and run one grid cell (fine-tune, then evaluate on the test split).

A cell trains on one of two inputs, chosen by ``images.train.trainable_depth`` (:mod:`equitune.images.inputs`, one
class each: how the method is built on them, training batches, validation, test logits):

- ``all`` (the paper): the whole network, on images transformed on the fly;
- a number of top units: the frozen lower part's D4 orbits, computed once by the cache stage and shared by every
  method and seed (:mod:`equitune.images.cached`); the same method wrappers run on them through
  :class:`~equitune.images.cached.OrbitAction`.

The from-scratch baseline ``gcnn`` (:mod:`equitune.images.gcnn`) has no backbone: it always trains on the images
(``images.train.gcnn`` settings) and is evaluated on them the same way.

Either way the saved ``model.pt`` is the state of the whole model on images (frozen units included), and the
metrics come from the logits of the test images moved by each element of D4 (:mod:`equitune.images.evaluation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.checks import equivariance_error
from ..core.errors import ConfigError
from ..pipeline.distributed import DistributedContext
from ..pipeline.modes import eval_mode
from .backbones import ImageClassifier, build_classifier, split_features
from .cached import build_cache, cache_description
from .canonical import backbone_calls, identity_weight, prior_regulariser, score_head
from .cells import Cell
from .config import CANONICALIZATION_METHODS, SCRATCH_METHODS, ImagesParams, ImagesTrain
from .evaluation import metrics_from_logits
from .gcnn import build_gcnn
from .inputs import CellInputs, ImageInputs, cell_inputs
from .methods import build_method, method_group, new_parameters
from .training import (
    Batch,
    EpochRecord,
    ShuffledBatches,
    TrainingResult,
    autocast_dtype,
    fit,
    make_optimizer,
    make_scheduler,
    predict,
)

__all__ = ["CHECKPOINT", "POSTHOC_METHOD", "CellResult", "cache_for", "check_distributed",
           "cell_cache_description", "inference_cost", "run_cell"]

CHECKPOINT = "model.pt"
INVARIANCE_GROUPS = ("c4", "d4")
POSTHOC_METHOD = "posthoc_equitune"
"""The fine-tuned classifier averaged over a group at test time only: evaluated inside each ``finetune`` cell, for
every group of :data:`INVARIANCE_GROUPS`, and written to its metrics under this key (no cells of its own)."""


@dataclass
class CellResult:
    state: dict  # the whole model on images, best-validation weights
    curves: dict
    metrics: dict


def cell_cache_description(params: ImagesParams, backbone: str) -> dict:
    return cache_description(backbone, params.resolution, params.train.trainable_depth, params.train.pretrained)


def cache_for(params: ImagesParams, backbone: str, data: dict[str, np.ndarray], num_classes: int,
              progress: bool = False) -> dict:
    """The content of the cache file of ``backbone`` on ``data`` (only a description when the whole network is
    trained, so the stage exists in every profile)."""
    description = cell_cache_description(params, backbone)
    depth = params.train.trainable_depth
    if depth == "all":
        return build_cache(None, data, params.resolution, description)
    classifier = build_classifier(backbone, num_classes, params.resolution, params.train.pretrained)
    frozen, _ = split_features(classifier, depth)
    return build_cache(frozen, data, params.resolution, description, progress=progress)


def inference_cost(model: nn.Module, inputs, batch_size: int, device: torch.device,
                   prepare: Callable[[object], torch.Tensor] | None = None, autocast: torch.dtype | None = None
                   ) -> dict[str, float]:
    """Measured test images per second of ``model`` on the upright test ``inputs`` (eval mode, ``batch_size`` at a
    time, preparing the inputs included) and its classifier calls per image (:func:`backbone_calls`)."""
    start = time.perf_counter()
    predict(model, inputs, batch_size, prepare=prepare, device=device, autocast=autocast)
    seconds = time.perf_counter() - start
    prepared = inputs if prepare is None else prepare(inputs)
    with eval_mode(model):
        calls = backbone_calls(model, prepared, batch_size, device)
    return {"images_per_second": len(inputs) / seconds, "backbone_calls_per_image": calls}


def _invariance_errors(model: nn.Module, inputs: torch.Tensor, actions: dict[str, object]) -> dict[str, float]:
    """Measured max |f(g x) - f(x)| over each group's elements and a batch of test inputs (eval mode)."""
    with eval_mode(model):
        return {name: equivariance_error(model, action, inputs) for name, action in actions.items()}


def check_distributed(params: ImagesParams, context: DistributedContext, method: str | None = None) -> None:
    """A :class:`ConfigError` before any work for a torchrun job that could not train as one process does.

    Batch norm that trains on batch statistics (``freeze_batchnorm: false``, or the from-scratch ``gcnn``) must see
    the global batch's statistics, not each rank's share: that is SyncBatchNorm, which torch implements for CUDA
    devices only."""
    if context.is_distributed and method in SCRATCH_METHODS and context.device.type != "cuda":
        raise ConfigError(f"method {method} (images.grid.group_methods) trains its batch norm from scratch: under "
                          f"torchrun on {context.device.type} that needs SyncBatchNorm, which torch supports on CUDA "
                          "devices only: run it on GPUs or in one process")
    if context.is_distributed and not params.train.freeze_batchnorm and context.device.type != "cuda":
        raise ConfigError(f"images.train.freeze_batchnorm=false under torchrun on {context.device.type} needs "
                          "synchronised batch statistics (SyncBatchNorm), which torch supports on CUDA devices "
                          "only: set images.train.freeze_batchnorm: true, run on GPUs, or run one process")


def _place(model: nn.Module, device: torch.device, freeze_batchnorm: bool, context: DistributedContext | None
           ) -> nn.Module:
    """``model`` on ``device``; under torchrun inside DistributedDataParallel, with batch norm that trains on batch
    statistics made synchronous (statistics of the global batch, as in one process; frozen batch norm needs none)."""
    if context is None or not context.is_distributed:
        return model.to(device)
    if not freeze_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return context.wrap(model)


def run_cell(params: ImagesParams, cell: Cell, data: dict[str, np.ndarray], classes: tuple[str, ...],
             orbits: dict[str, torch.Tensor] | None, generator: torch.Generator, device: torch.device,
             on_epoch: Callable[[EpochRecord], None] | None = None, progress: bool = False,
             context: DistributedContext | None = None) -> CellResult | None:
    """Fine-tune the cell's model (best epoch by upright validation accuracy), then evaluate it on the test split.

    ``orbits``: the cached orbits of each split (None when ``trainable_depth`` is ``all``). Under torchrun
    (``context``) the ranks train one model with DistributedDataParallel on shares of the same global batches;
    rank 0 alone evaluates it and gets the result, the others None."""
    group = method_group(cell.method, cell.group)
    if cell.method in SCRATCH_METHODS:
        return _run_gcnn_cell(params, cell, data, classes, generator, device, on_epoch, progress, context)
    settings = params.train
    inputs = cell_inputs(params, data, orbits, device, autocast_dtype(settings, device))
    built = _build(params, cell, len(classes), inputs)
    augment = generator if cell.method == "finetune_augment" else None
    regularizer = (prior_regulariser(built.model, settings.canonicalization_prior_weight)
                   if cell.method == "canonicalize_prior" else None)
    result, training_seconds = _train(built.model, inputs, inputs.training_batches(augment), settings, generator,
                                      freeze_batchnorm=settings.freeze_batchnorm,
                                      new=new_parameters(built.model, built.upper), regularizer=regularizer,
                                      on_epoch=on_epoch, progress=progress, context=context)
    if context is not None and not context.is_main:
        return None

    built.model.eval()
    metrics = _evaluate(built.model, inputs, params, classes, cell.method, group, built.upper)
    if cell.method == "finetune":
        metrics[POSTHOC_METHOD] = {
            g: _evaluate(inputs.posthoc(g, built.upper), inputs, params, classes, "equitune", g, built.upper)
            for g in INVARIANCE_GROUPS}
    curves = _record_training(metrics, result, training_seconds)
    return CellResult(_detached(built.whole(cell.method, cell.group).state_dict()), curves, metrics)


@dataclass
class _Built:
    """A cell's model and the parts it was built from (they share their modules)."""

    classifier: ImageClassifier  # the whole network on images
    frozen: nn.Module  # the part a canonicalizer's score reads on images
    scores: nn.Module | None  # the canonicalization methods' score
    lambda_args: dict
    model: nn.Module  # the method on the cell's input kind, what trains
    upper: ImageClassifier  # the classifier inside ``model``: the trained units and the head

    def whole(self, method: str, group: str) -> nn.Module:
        """The whole model on images (the frozen units included), sharing the trained modules."""
        return build_method(method, group, self.classifier, lambda_net=getattr(self.model, "lambda_net", None),
                            score_head=self.scores, frozen=self.frozen, **self.lambda_args)


def _build(params: ImagesParams, cell: Cell, num_classes: int, inputs: CellInputs) -> _Built:
    """The cell's classifier and, around it, its method on the cell's input kind."""
    settings = params.train
    depth = settings.trainable_depth
    classifier = build_classifier(cell.backbone, num_classes, params.resolution, settings.pretrained)
    lambda_args = {"lambda_hidden": settings.lambda_hidden, "equizero_proxy": settings.equizero_proxy}
    # The part a canonicalizer's score reads on images (the cached orbits hold its outputs): the frozen lower units,
    # or the input normalisation alone when the whole network trains.
    frozen, _ = split_features(classifier, classifier.unit_count if depth == "all" else depth)
    scores = (score_head(cell.method, _channels(frozen, params.resolution))
              if cell.method in CANONICALIZATION_METHODS else None)
    model, upper = inputs.build(cell.method, cell.group, classifier, frozen, scores, lambda_args)
    return _Built(classifier, frozen, scores, lambda_args, model, upper)


def _train(model: nn.Module, inputs: CellInputs, load_batch: Callable[[torch.Tensor], Batch], settings: ImagesTrain,
           generator: torch.Generator, *, freeze_batchnorm: bool, new: Iterable[nn.Parameter] = (),
           regularizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
           on_epoch: Callable[[EpochRecord], None] | None, progress: bool, context: DistributedContext | None
           ) -> tuple[TrainingResult, float]:
    """``model`` trained for ``settings.epochs`` (best epoch by ``inputs.validate``) and the wall seconds it took
    (validation after each epoch included, as for every method). ``new``: the parameters at ``settings.head_lr``."""
    trained = _place(model, inputs.device, freeze_batchnorm, context)
    # Every rank draws the same global batches from the same seeded generator (one process: the batches themselves).
    batches = ShuffledBatches(len(inputs.data["train_y"]), settings.batch_size, generator)
    optimizer = make_optimizer(model, settings, new)
    scheduler = make_scheduler(optimizer, settings, settings.epochs * len(batches))
    start = time.perf_counter()
    result = fit(trained, optimizer, batches, load_batch, epochs=settings.epochs, validate=inputs.validate,
                 freeze_batchnorm=freeze_batchnorm, scheduler=scheduler, autocast=inputs.autocast,
                 on_epoch=on_epoch, progress=progress, context=context, regulariser=regularizer)
    return result, time.perf_counter() - start


def _detached(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _record_training(metrics: dict, result: TrainingResult, seconds: float) -> dict:
    """The cell's per-epoch record (kept in memory: the stage's curve file holds it for DVC plots and the report),
    summarised under ``metrics["training"]`` with the training time."""
    curves = {
        "best_epoch": result.best_epoch,
        "epochs": [{"epoch": r.epoch, "train_loss": r.train_loss, "val_accuracy": r.val_accuracy}
                   for r in result.history],
    }
    metrics["training"] = {
        "best_epoch": result.best_epoch,
        "seconds": seconds,
        "curve": {f"epoch{r['epoch']}": {"train_loss": r["train_loss"], "val_accuracy": r["val_accuracy"]}
                  for r in curves["epochs"]},
    }
    return curves


def _run_gcnn_cell(params: ImagesParams, cell: Cell, data: dict[str, np.ndarray], classes: tuple[str, ...],
                   generator: torch.Generator, device: torch.device,
                   on_epoch: Callable[[EpochRecord], None] | None, progress: bool,
                   context: DistributedContext | None) -> CellResult | None:
    """:func:`run_cell` for the from-scratch G-CNN: trained on the training images at ``images.resolution`` (batch
    norm on batch statistics, best epoch by upright validation accuracy), evaluated on the test images as every
    other cell (one network call per image). The saved state is the model's in eval mode (``e2cnn`` then holds its
    expanded filters as buffers): load it into ``build_gcnn(...).eval()``."""
    own = params.train.gcnn
    schedule = params.train.model_copy(update={"lr": own.lr, "head_lr": None, "epochs": own.epochs})
    model = build_gcnn(cell.group, int(data["train_x"].shape[1]), own.channels, len(classes))
    inputs = ImageInputs(params, data, device, autocast=None)
    result, training_seconds = _train(model, inputs, inputs.training_batches(), schedule, generator,
                                      freeze_batchnorm=False, on_epoch=on_epoch, progress=progress, context=context)
    if context is not None and not context.is_main:
        return None
    model.eval()
    metrics = _evaluate(model, inputs, params, classes, cell.method, cell.group, None)
    curves = _record_training(metrics, result, training_seconds)
    return CellResult(_detached(model.state_dict()), curves, metrics)


def _channels(frozen: nn.Module, resolution: int) -> int:
    """Channels of the maps ``frozen`` outputs (one dummy image, eval mode: batch-norm statistics untouched)."""
    with eval_mode(frozen), torch.no_grad():
        return int(frozen(torch.zeros(1, 3, resolution, resolution)).shape[1])


def _evaluate(model: nn.Module, inputs: CellInputs, params: ImagesParams, classes: tuple[str, ...], method: str,
              group: str, upper: ImageClassifier | None) -> dict:
    """Accuracy metrics, measured invariance errors and inference cost of ``model`` (eval mode) on the test split
    as ``inputs`` give it."""
    evaluation = params.evaluation
    logits = inputs.test_logits(model, method, group, upper, params.train.equizero_proxy)
    probe = inputs.probe(evaluation.invariance_batch)
    metrics = metrics_from_logits(logits.float(), inputs.data["test_y"], classes, evaluation.rotation_seed)
    groups = dict.fromkeys((*INVARIANCE_GROUPS, *(() if group == "trivial" else (group,))))
    metrics["invariance_error"] = _invariance_errors(model, probe, {g: inputs.action(g) for g in groups})
    metrics["inference"] = inference_cost(model, inputs.test, evaluation.batch_size, inputs.device, inputs.prepare,
                                          inputs.autocast)
    if method in CANONICALIZATION_METHODS:
        upright = inputs.test if inputs.prepare is None else inputs.prepare(inputs.test)
        with eval_mode(model):
            metrics["inference"]["identity_weight_upright"] = identity_weight(model, upright, evaluation.batch_size,
                                                                              inputs.device)
    return metrics
