"""What the image stages do, as the functions the stage scripts call: cache the frozen part's orbits of a dataset,
and run one grid cell (fine-tune, then evaluate on the test split).

A cell trains on one of two inputs, chosen by ``images.train.trainable_depth``:

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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.checks import equivariance_error
from ..core.errors import ConfigError
from ..core.groups import image_action
from ..pipeline.distributed import DistributedContext
from .backbones import ImageClassifier, build_classifier, split_features
from .cached import OrbitAction, build_cache, cache_description
from .canonical import backbone_calls, identity_weight, prior_regulariser, score_head
from .cells import Cell
from .config import CANONICALIZATION_METHODS, SCRATCH_METHODS, ImagesParams
from .data import to_model_input
from .evaluation import D4_ELEMENTS, metrics_from_logits
from .gcnn import build_gcnn
from .methods import build_method, method_group, new_parameters
from .modes import eval_mode
from .training import (
    EpochRecord,
    ImageBatches,
    OrbitBatches,
    ShuffledBatches,
    accuracy,
    autocast_dtype,
    fit,
    make_optimiser,
    make_scheduler,
    predict,
)

__all__ = ["CHECKPOINT", "CURVES", "POSTHOC_METHOD", "CellResult", "cache_for", "check_distributed",
           "cell_cache_description", "inference_cost", "moved_orbit_logits", "orbit_logits", "image_logits", "run_cell",
           "slot_features"]

CHECKPOINT = "model.pt"
CURVES = "curves.json"
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


def image_logits(model: nn.Module, images: np.ndarray, resolution: int, batch_size: int, device: torch.device,
                 autocast: torch.dtype | None = None) -> torch.Tensor:
    """``[8, N, K]``: the logits of ``images`` moved by each element of D4 (whole model on images)."""
    action = image_action("d4")
    return torch.stack([
        predict(model, images, batch_size, prepare=lambda x, g=g: action.apply(to_model_input(x, resolution), g),
                device=device, autocast=autocast)
        for g in action.group
    ])


def slot_features(upper: ImageClassifier, orbits: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``[N, 8, F]``: the trained upper units' features of every slot of the orbits (eval mode)."""
    features = predict(upper.features, orbits.flatten(0, 1), batch_size * len(D4_ELEMENTS), device=device)
    return features.reshape(orbits.shape[0], orbits.shape[1], *features.shape[1:])


def orbit_logits(model: nn.Module, method: str, group: str, upper: ImageClassifier, orbits: torch.Tensor,
                 batch_size: int, device: torch.device, equizero_proxy: str = "entropy",
                 features: torch.Tensor | None = None) -> torch.Tensor:
    """``[8, N, K]`` for a model trained on cached orbits, from the test orbits ``[N, 8, ...]``.

    The trained upper units run once per slot (eval mode: each slot's features depend on that slot alone); the
    method is then rebuilt on those features with the same head and lambda MLP and evaluated on the features' orbit
    moved by each element of D4 (:class:`OrbitAction` acts on any per-slot tensor). This gives the same logits as
    ``model`` on the moved orbits, at 1/|G| of the cost (a test checks the equality in float64). ``features``: those
    slot features already computed (:func:`slot_features`: one pass serves every method built on ``upper``)."""
    if features is None:
        features = slot_features(upper, orbits, batch_size, device)
    on_features = build_method(method, group, ImageClassifier(nn.Sequential(), upper.head),
                               equizero_proxy=equizero_proxy, on_orbits=True,
                               lambda_net=getattr(model, "lambda_net", None))
    action = OrbitAction("d4")
    return torch.stack([predict(on_features, action.apply(features, g), batch_size, device=device)
                        for g in action.group])


def moved_orbit_logits(model: nn.Module, orbits: torch.Tensor, batch_size: int, device: torch.device
                       ) -> torch.Tensor:
    """``[8, N, K]``: ``model`` on the test orbits moved by each element of D4, run as it is. For the
    canonicalization methods, whose scorer reads the cached maps themselves, not the trained upper units' features
    (so :func:`orbit_logits`'s shortcut does not apply)."""
    action = OrbitAction("d4")
    return torch.stack([predict(model, action.apply(orbits, g), batch_size, device=device) for g in action.group])


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
    settings, evaluation = params.train, params.evaluation
    depth = settings.trainable_depth
    cached = depth != "all"
    if cached and orbits is None:
        raise ConfigError(f"images.train.trainable_depth={depth} trains on cached orbits, but none were given")
    classifier = build_classifier(cell.backbone, len(classes), params.resolution, settings.pretrained)
    augment = generator if cell.method == "finetune_augment" else None
    autocast = autocast_dtype(settings, device)
    lambda_args = {"lambda_hidden": settings.lambda_hidden, "equizero_proxy": settings.equizero_proxy}
    # The part a canonicalizer's score reads on images (the cached orbits hold its outputs): the frozen lower units,
    # or the input normalisation alone when the whole network trains.
    frozen, _ = split_features(classifier, classifier.unit_count if depth == "all" else depth)
    scores = (score_head(cell.method, _channels(frozen, params.resolution))
              if cell.method in CANONICALIZATION_METHODS else None)
    if cached:
        _, trainable = split_features(classifier, depth)
        upper = ImageClassifier(trainable, classifier.head)
        model = build_method(cell.method, cell.group, upper, on_orbits=True, score_head=scores, **lambda_args)
        load_batch = OrbitBatches(orbits["train"], data["train_y"], device, augment)

        def validate(m: nn.Module) -> float:
            return accuracy(predict(m, orbits["val"], evaluation.batch_size, device=device), data["val_y"])
    else:
        upper = classifier
        model = build_method(cell.method, cell.group, classifier, score_head=scores, frozen=frozen, **lambda_args)
        load_batch = ImageBatches(data["train_x"], data["train_y"], params.resolution, device, augment)

        def validate(m: nn.Module) -> float:
            logits = predict(m, data["val_x"], evaluation.batch_size, device=device, autocast=autocast,
                             prepare=lambda x: to_model_input(x, params.resolution))
            return accuracy(logits, data["val_y"])

    trained = _place(model, device, settings.freeze_batchnorm, context)
    # Every rank draws the same global batches from the same seeded generator (one process: the batches themselves).
    batches = ShuffledBatches(len(data["train_y"]), settings.batch_size, generator)
    optimiser = make_optimiser(model, settings, new_parameters(model, upper))
    scheduler = make_scheduler(optimiser, settings, settings.epochs * len(batches))
    regulariser = (prior_regulariser(model, settings.canonicalization_prior_weight)
                   if cell.method == "canonicalize_prior" else None)
    start = time.perf_counter()
    result = fit(trained, optimiser, batches, load_batch, epochs=settings.epochs, validate=validate,
                 freeze_batchnorm=settings.freeze_batchnorm, scheduler=scheduler, autocast=autocast,
                 on_epoch=on_epoch, progress=progress, context=context, regulariser=regulariser)
    training_seconds = time.perf_counter() - start  # validation after each epoch included, as for every method
    if context is not None and not context.is_main:
        return None

    model.eval()
    test = _TestInputs(params, data, classes, orbits, device, autocast)
    metrics = test.evaluate(model, cell.method, group, upper, settings.equizero_proxy)
    if cell.method == "finetune":
        metrics[POSTHOC_METHOD] = {
            g: test.evaluate(build_method("equitune", g, upper, on_orbits=cached), "equitune", g, upper,
                             settings.equizero_proxy)
            for g in INVARIANCE_GROUPS}
    curves = _record_training(metrics, result, training_seconds)
    # The whole model on images (the frozen units included), sharing the trained modules.
    whole = build_method(cell.method, cell.group, classifier, lambda_net=getattr(model, "lambda_net", None),
                         score_head=scores, frozen=frozen, **lambda_args)
    state = {k: v.detach().cpu().clone() for k, v in whole.state_dict().items()}
    return CellResult(state, curves, metrics)


def _record_training(metrics: dict, result, seconds: float) -> dict:
    """The cell's curves (``curves.json``), recorded under ``metrics["training"]`` too with the training time."""
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
    settings = params.train
    own = settings.gcnn
    schedule = settings.model_copy(update={"lr": own.lr, "head_lr": None, "epochs": own.epochs})
    model = build_gcnn(cell.group, int(data["train_x"].shape[1]), own.channels, len(classes))
    load_batch = ImageBatches(data["train_x"], data["train_y"], params.resolution, device)

    def validate(m: nn.Module) -> float:
        logits = predict(m, data["val_x"], params.evaluation.batch_size, device=device,
                         prepare=lambda x: to_model_input(x, params.resolution))
        return accuracy(logits, data["val_y"])

    trained = _place(model, device, freeze_batchnorm=False, context=context)
    batches = ShuffledBatches(len(data["train_y"]), settings.batch_size, generator)
    optimiser = make_optimiser(model, schedule)
    scheduler = make_scheduler(optimiser, schedule, own.epochs * len(batches))
    start = time.perf_counter()
    result = fit(trained, optimiser, batches, load_batch, epochs=own.epochs, validate=validate,
                 freeze_batchnorm=False, scheduler=scheduler, on_epoch=on_epoch, progress=progress, context=context)
    training_seconds = time.perf_counter() - start
    if context is not None and not context.is_main:
        return None
    model.eval()
    metrics = _TestInputs(params, data, classes, None, device, None).evaluate(model, cell.method, cell.group, None,
                                                                            settings.equizero_proxy)
    curves = _record_training(metrics, result, training_seconds)
    return CellResult({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, curves, metrics)


def _channels(frozen: nn.Module, resolution: int) -> int:
    """Channels of the maps ``frozen`` outputs (one dummy image, eval mode: batch-norm statistics untouched)."""
    with eval_mode(frozen), torch.no_grad():
        return int(frozen(torch.zeros(1, 3, resolution, resolution)).shape[1])


class _TestInputs:
    """The test split as a trained cell's model reads it (cached orbits or images), and its evaluation."""

    def __init__(self, params: ImagesParams, data: dict[str, np.ndarray], classes: tuple[str, ...],
                 orbits: dict[str, torch.Tensor] | None, device: torch.device, autocast: torch.dtype | None):
        self.params, self.data, self.classes, self.orbits = params, data, classes, orbits
        self.device, self.autocast = device, autocast
        self.cached = orbits is not None
        self._features: torch.Tensor | None = None

    def evaluate(self, model: nn.Module, method: str, group: str, upper: ImageClassifier,
                 equizero_proxy: str) -> dict:
        """Accuracy metrics, measured invariance errors and inference cost of ``model`` (eval mode)."""
        evaluation, resolution = self.params.evaluation, self.params.resolution
        batch, device = evaluation.batch_size, self.device
        probe = slice(0, evaluation.invariance_batch)
        prepare = None
        if self.cached and method in CANONICALIZATION_METHODS:
            logits = moved_orbit_logits(model, self.orbits["test"], batch, device)
        elif self.cached:
            if self._features is None:  # the same trained upper units for every model a cell evaluates
                self._features = slot_features(upper, self.orbits["test"], batch, device)
            logits = orbit_logits(model, method, group, upper, self.orbits["test"], batch, device, equizero_proxy,
                                  features=self._features)
        else:
            logits = image_logits(model, self.data["test_x"], resolution, batch, device, self.autocast)

            def prepare(x):
                return to_model_input(x, resolution)
        inputs = self.orbits["test"] if self.cached else self.data["test_x"]
        probe_inputs = inputs[probe].to(device) if self.cached else to_model_input(inputs[probe], resolution).to(device)
        action_of = OrbitAction if self.cached else image_action
        metrics = metrics_from_logits(logits.float(), self.data["test_y"], self.classes, evaluation.rotation_seed)
        groups = dict.fromkeys((*INVARIANCE_GROUPS, *(() if group == "trivial" else (group,))))
        metrics["invariance_error"] = _invariance_errors(model, probe_inputs, {g: action_of(g) for g in groups})
        metrics["inference"] = inference_cost(model, inputs, batch, device, prepare, self.autocast)
        if method in CANONICALIZATION_METHODS:
            upright = inputs if self.cached else prepare(inputs)
            with eval_mode(model):
                metrics["inference"]["identity_weight_upright"] = identity_weight(model, upright, batch, device)
        return metrics
