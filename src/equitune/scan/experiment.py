"""What one SCAN grid cell does, as the functions the stage scripts call: pretrain a cell's model, load it back,
tune and evaluate it.

Every path comes from the caller (dvc.yaml passes them to the stage scripts): a model folder holds
``pretrained.pt``; each pretraining and each tuning cell writes one metrics file (curves, accuracies, costs). The
split files are :mod:`.splits`'s, the evaluations :mod:`.evaluation`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import DataError
from ..core.frames import FrameRule
from ..core.proxies import ProxyScore
from ..core.wrappers import EquiZero
from ..pipeline.distributed import DistributedContext
from .cells import ScanCell, TuneCell
from .clock import Clock, Seconds, add_seconds, subtract_seconds
from .combination import equitune_wrapper, frame_wrapper
from .config import ScanParams, ScanTune, bind_scan_group, scan_support_frame
from .data import input_vocabulary, output_vocabulary
from .decoding import frame_mask
from .evaluation import (
    ExtraEvaluations,
    Perms,
    accuracy,
    decoding_equivariance_fraction,
    teacher_forced_equivariance_error,
    validation_overlap,
)
from .model import Seq2Seq
from .training import EncodedPairs, pretrain, tune

__all__ = ["CHECKPOINT", "TUNED_METHODS", "build_model", "load_pretrained", "pretrain_cell", "tune_cell",
           "tune_through_frame", "tuning_wrapper"]

CHECKPOINT = "pretrained.pt"
TUNED_METHODS = ("equitune", "equizero")
"""The methods a tune cell trains through the whole group, in this order (then ``frame``, through its frame)."""

Log = Callable[[dict[str, float], int], None]
"""``log(metrics, step)``: where a cell's curves go (the stage passes its MLflow run's ``log_metrics``)."""


def build_model(params: ScanParams, rnn: str) -> Seq2Seq:
    """A freshly initialised seq2seq model of ``scan.model`` (and ``scan.recipes.<rnn>.model``) with the recurrent
    layer ``rnn``."""
    m = params.model_for(rnn)
    return Seq2Seq(rnn, len(input_vocabulary()), len(output_vocabulary()), m.hidden_size, m.layers, m.dropout,
                   m.attention, m.source_length)


def pretrain_cell(params: ScanParams, cell: ScanCell, data: dict[str, EncodedPairs], generator: torch.Generator,
                  device: torch.device, log: Log, context: DistributedContext | None = None
                  ) -> tuple[dict, dict] | None:
    """Train the cell's plain seq2seq model; (checkpoint to save, metrics: the validation curve, the selected
    checkpoint's validation and test accuracy, the cost).

    The checkpoint is chosen on validation accuracy alone; its test accuracy is measured once, afterwards, for the
    report's "pretrained" column. Under torchrun (``context``) the ranks train one model with
    DistributedDataParallel; rank 0 alone measures the test accuracy and gets the result, the others None."""
    model = build_model(params, cell.rnn)
    wrapped = context.wrap(model) if context is not None else model.to(device)
    history = []

    def on_validation(seen: int, loss: float, validation_accuracy: float) -> None:
        history.append({"examples": seen, "train_loss": loss, "validation_accuracy": validation_accuracy})
        log({"train_loss": loss, "validation_accuracy": validation_accuracy}, seen)

    clock = Clock()
    best_state, best_accuracy, best_at = pretrain(
        wrapped, data["train"], lambda m: accuracy(m, data["validation"], params, "greedy"), params.pretrain_for(cell.rnn),
        generator=generator, on_validation=on_validation, device=device, context=context)
    cost = {f"pretrain_{key}": value for key, value in clock.seconds().items()}
    if context is not None and not context.is_main:
        return None
    model.load_state_dict(best_state)
    test_accuracy = accuracy(model, data["test"], params, "greedy")
    log({**cost, "test_accuracy": test_accuracy}, 0)
    metrics = {"validation_accuracy": best_accuracy, "test_accuracy": test_accuracy, "best_at_examples": best_at,
               **cost, "history": history,
               "validation_overlap": validation_overlap(model, data, params)}
    # The checkpoint keeps its key "cell" (the recurrent layer): the saved files stay byte for byte the same.
    return {"cell": cell.rnn, "attention": params.model_for(cell.rnn).attention, "state_dict": best_state}, metrics


def load_pretrained(params: ScanParams, cell: ScanCell, model_dir: str | Path, device: torch.device) -> Seq2Seq:
    """The pretraining cell's checkpoint, in eval mode on ``device``; it must match ``scan.model.attention``."""
    source = Path(model_dir) / CHECKPOINT
    if not source.exists():
        raise DataError(f"{source} not found; run scan_pretrain@{cell.name} first")
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    saved, attention = checkpoint.get("attention", "input_feeding"), params.model_for(cell.rnn).attention
    if saved != attention:
        raise DataError(f"{source} was trained with scan.model.attention: {saved}, but params say "
                        f"{attention}; rerun scan_pretrain@{cell.name}")
    model = build_model(params, cell.rnn)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


def tune_cell(params: ScanParams, cell: TuneCell, data: dict[str, EncodedPairs], pretrained: Seq2Seq,
              seed_generator: Callable[[], torch.Generator], device: torch.device, log: Log) -> dict:
    """Equitune and equizero-tune the pretrained model with the cell's group (the |G| copies as one batch through
    the core wrappers) and evaluate them: the cell's metrics (test and validation accuracy at the curve steps,
    equivariance checks, wall and CPU seconds of each method). Then the ``frame`` method: the pretrained model
    tuned through its own frame (:func:`tune_through_frame`; 0 steps: ``frame_0_steps``, tuned: ``frame``).

    Beside them, evaluation only (no extra training), at 0 steps and after tuning: equitune's checkpoints decoded
    with both combination rules (``equitune_combinations``) and with frame decoding (``frame_0_steps``, which is
    the pretrained model decoded through the frame, and ``frame_decoding_of_equitune``: equitune's tuned
    checkpoint; the split's ``frame_excluded_words``), the mean frame size on the test split, and the test split's
    decoding speed of equitune, equizero and frame after tuning (``decoding_speed``, all on equitune's and
    equizero's checkpoints). Their seconds are ``added_evaluation_cost``, not part of ``equitune_cost``.

    ``seed_generator()`` reseeds everything and returns a generator: each method starts from the same state (frame
    tuning runs last, so adding it changed none of the random draws of the other two)."""
    perms = bind_scan_group(params.groups[cell.group])
    frame = scan_support_frame(params.tune.frame_excluded_words[cell.split], perms[0])
    metrics = _before_tuning(pretrained, data, perms, frame)
    extra = ExtraEvaluations(params, data, perms, frame)
    curves: dict[str, dict[str, float]] = {}
    validation_curves: dict[str, dict[str, float]] = {}
    for method in TUNED_METHODS:
        tuned = _tune_method(method, params, cell, data, pretrained, perms, extra, seed_generator(), device, log)
        metrics.update(tuned.results(method))
        curves[method], validation_curves[method] = tuned.curve, tuned.validation_curve()
        if method == "equitune":
            metrics.update(_equitune_checks(params, data, perms, tuned.model, extra, metrics))
    framed = tune_through_frame(params, cell, data, pretrained, perms, frame, metrics["frame_0_steps"],
                                seed_generator(), device, log)
    validation_curves["frame"] = framed.pop("validation_curve")
    metrics.update(framed)
    metrics.update(curve=curves, validation_curve=validation_curves, decoding_speed=extra.speed,
                   added_evaluation_cost=extra.cost)
    log({f"{method}_{key}": value for method in (*curves, "frame") for key, value in metrics[f"{method}_cost"].items()},
        0)
    return metrics


def _before_tuning(pretrained: Seq2Seq, data: dict[str, EncodedPairs], perms: Perms, frame: FrameRule) -> dict:
    """The group's order, the pretrained model's equivariance error and the mean frame size on the test split."""
    input_perm = perms[0]
    return {
        "group_order": input_perm.group.order,
        "pretrained_equivariance_error": teacher_forced_equivariance_error(pretrained, data["validation"], perms,
                                                                           equituned=False),
        "frame_mean_size": float(frame_mask(frame, data["test"].src, input_perm).sum(dim=0).double().mean()),
    }


@dataclass
class _Tuned:
    """One method's tuning: the tuned model, test accuracy at the curve steps, validation accuracy by step, cost."""

    model: Seq2Seq
    curve: dict[str, float]
    validation: dict[int, float]
    steps: int
    cost: Seconds

    def results(self, method: str) -> dict:
        """``<method>_0_steps`` and ``<method>`` (test and validation accuracy), then ``<method>_cost``."""
        results: dict = {key: {"test_accuracy": self.curve[f"step_{step}_test_accuracy"],
                               "validation_accuracy": self.validation[step]}
                         for key, step in ((f"{method}_0_steps", 0), (method, self.steps))}
        return {**results, f"{method}_cost": self.cost}

    def validation_curve(self) -> dict[str, float]:
        return {f"step_{s}_validation_accuracy": self.validation[s] for s in sorted(self.validation)}


def _tune_method(method: str, params: ScanParams, cell: TuneCell, data: dict[str, EncodedPairs], pretrained: Seq2Seq,
                 perms: Perms, extra: ExtraEvaluations, generator: torch.Generator, device: torch.device,
                 log: Log) -> _Tuned:
    """Tune a copy of the pretrained model through ``method``'s wrapper, test and validation accuracy at the curve
    steps; equitune's checkpoints at 0 steps and after tuning also get ``extra``'s evaluations, whose seconds are
    taken out of equitune's cost."""
    clock = Clock()
    settings = params.tune
    steps = settings.steps[cell.split]
    model = copy.deepcopy(pretrained)
    wrapper, proxy = tuning_wrapper(method, model, settings, perms)
    curve: dict[str, float] = {}
    validation: dict[int, float] = {}

    # Test accuracy at step 0 and at the last step are curve points, so each is decoded once.
    def on_checkpoint(step: int) -> None:
        timer = Clock()
        value = accuracy(model, data["test"], params, method, perms)
        if step == steps:
            extra.speed[method] = {"commands": len(data["test"]), **timer.seconds()}
        curve[f"step_{step}_test_accuracy"] = value
        log({f"{method}_test_accuracy": value}, step)
        validation[step] = accuracy(model, data["validation"], params, method, perms)
        log({f"{method}_validation_accuracy": validation[step]}, step)
        if method == "equitune" and step in (0, steps):
            extra.evaluate(model, "0_steps" if step == 0 else "tuned", timed=step == steps)

    tune(wrapper, data["train"], settings, lr=settings.lr[cell.split], steps=steps,
         checkpoints=settings.curve_for(cell.split), generator=generator, on_checkpoint=on_checkpoint, proxy=proxy,
         device=device, desc=method)
    model.eval()
    cost = clock.seconds()
    if method == "equitune":
        cost = subtract_seconds(cost, extra.cost)
    return _Tuned(model, curve, validation, steps, cost)


def tuning_wrapper(method: str, model: Seq2Seq, settings: ScanTune, perms: Perms
                    ) -> tuple[nn.Module, ProxyScore | None]:
    """The wrapper ``method`` tunes the model through, and equizero's proxy score (None for equitune): what the
    tune stage trains, for scripts that retrace it (scripts/scan_limits.py)."""
    input_perm, output_perm = perms
    actions = (input_perm.on_ids, output_perm.on_ids)
    if method == "equitune":
        return equitune_wrapper(settings.combination)(model, actions, output_action=output_perm.on_scores), None
    if method == "equizero":
        proxy = ProxyScore(settings.equizero_proxy)
        return EquiZero(model, actions, output_action=output_perm.on_scores, proxy=proxy), proxy
    raise ValueError(f"unknown tuned method {method!r}; allowed: {', '.join(TUNED_METHODS)}")


def _equitune_checks(params: ScanParams, data: dict[str, EncodedPairs], perms: Perms, model: Seq2Seq,
                     extra: ExtraEvaluations, metrics: dict) -> dict:
    """Equitune's tuned model: its equivariance (teacher-forced and in decoding), its accuracy with each
    combination rule, and frame decoding of its checkpoints (0 steps: the pretrained model)."""
    combination = params.tune.combination
    checks = {
        "equitune_equivariance_error": teacher_forced_equivariance_error(
            model, data["validation"], perms, equituned=True, combination=combination),
        "equitune_decoding_equivariance_fraction": decoding_equivariance_fraction(model, data["test"], params, perms),
    }
    checks["equitune_combinations"] = {"configured": combination, **extra.combinations(metrics)}
    checks["frame_0_steps"] = extra.frame["0_steps"]
    checks["frame_decoding_of_equitune"] = extra.frame["tuned"]
    return checks


def tune_through_frame(params: ScanParams, cell: TuneCell, data: dict[str, EncodedPairs], pretrained: Seq2Seq,
                       perms: Perms, frame: FrameRule, zero_steps: dict[str, float], generator: torch.Generator,
                       device: torch.device, log: Log) -> dict:
    """The ``frame`` method tuned: the pretrained model trained through its own frame (the training loss on the
    frame average, only each command's frame copies through the model as one batch; the configured combination),
    with equitune's steps, lr, schedule and batches (``generator`` seeded from the cell like equitune's).

    ``perms`` is the cell's group bound to the vocabularies (:func:`bind_scan_group`), ``frame`` its frame rule.
    Evaluated by frame decoding on the validation split at the curve steps and on the test split after the last
    step only (test decodes are the expensive part of a cell). Step 0 is the pretrained model, whose frame decoding
    ``zero_steps`` (``frame_0_steps``) already measured. Returns ``frame`` (test and validation accuracy),
    ``frame_cost`` (wall and CPU seconds with those evaluations; ``training_*``: without them),
    ``frame_equivariance_error`` (float64, teacher-forced) and ``validation_curve``."""
    input_perm, output_perm = perms
    settings = params.tune
    steps = settings.steps[cell.split]
    clock = Clock()
    model = copy.deepcopy(pretrained)
    wrapper = frame_wrapper(settings.combination)(model, (input_perm.on_ids, output_perm.on_ids), frame,
                                                  output_action=output_perm.on_scores)
    validation = {0: zero_steps["validation_accuracy"]}
    tuned = dict(zero_steps)
    evaluation: Seconds = {"seconds": 0.0, "cpu_seconds": 0.0}
    log({"frame_test_accuracy": zero_steps["test_accuracy"], "frame_validation_accuracy": validation[0]}, 0)

    def on_checkpoint(step: int) -> None:
        timer = Clock()
        validation[step] = accuracy(model, data["validation"], params, "frame", perms, frame=frame)
        values = {"frame_validation_accuracy": validation[step]}
        if step == steps:
            tuned.update(test_accuracy=accuracy(model, data["test"], params, "frame", perms, frame=frame),
                         validation_accuracy=validation[step])
            values["frame_test_accuracy"] = tuned["test_accuracy"]
        log(values, step)
        evaluation.update(add_seconds(evaluation, timer.seconds()))

    tune(wrapper, data["train"], settings, lr=settings.lr[cell.split], steps=steps,
         checkpoints=[s for s in settings.curve_for(cell.split) if s > 0], generator=generator,
         on_checkpoint=on_checkpoint, device=device, desc="frame")
    model.eval()
    total = clock.seconds()
    training = subtract_seconds(total, evaluation)
    return {"frame": tuned,
            "frame_cost": {**total, "training_seconds": training["seconds"],
                           "training_cpu_seconds": training["cpu_seconds"]},
            "frame_equivariance_error": teacher_forced_equivariance_error(
                model, data["validation"], perms, equituned=True, combination=settings.combination, frame=frame),
            "validation_curve": {f"step_{s}_validation_accuracy": validation[s] for s in sorted(validation)}}
