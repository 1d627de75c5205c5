"""What one SCAN grid cell does, as the functions the stage scripts call: prepare the split files, pretrain a
cell, tune and evaluate it.

Every path comes from the caller (dvc.yaml passes them to the stage scripts): a split folder holds
``{train,validation,test}.txt`` in the official line format; a model folder holds ``pretrained.pt``; each
pretraining and each tuning cell writes one metrics file (curves, accuracies, costs).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.checks import equivariance_error
from ..core.errors import DataError
from ..core.groups import VocabPermutation
from ..core.proxies import ProxyScore
from ..core.wrappers import EquiZero
from ..pipeline.distributed import DistributedContext
from .cells import ScanCell, TuneCell
from .combination import COMBINATIONS, equitune_wrapper, frame_wrapper
from .config import ScanParams, bind_scan_group, scan_support_frame
from .data import (
    download_official_split,
    format_lines,
    generate_split,
    hold_out_validation,
    input_vocabulary,
    output_vocabulary,
    pairs_checksum,
    read_pairs,
)
from .decoding import (
    decode_batched,
    equituned_decode,
    equizero_decode,
    frame_decode,
    frame_mask,
    greedy_decode,
    match_flags,
)
from .model import Seq2Seq
from .training import EncodedPairs, encode_pairs, lines_in, make_batch, pretrain, tune

__all__ = ["CHECKPOINT", "PARTS", "accuracy", "build_model", "correct_flags", "decoding_equivariance_fraction",
           "load_pretrained", "load_split_files", "prepare_splits", "pretrain_cell", "teacher_forced_equivariance_error",
           "tune_cell", "tune_through_frame"]

PARTS = ("train", "validation", "test")
CHECKPOINT = "pretrained.pt"

Log = Callable[[dict[str, float], int], None]
"""``log(metrics, step)``: where a cell's curves go (the stage passes its MLflow run's ``log_metrics``)."""


def prepare_splits(params: ScanParams, write: Callable[[str, str], None]) -> dict:
    """Every split of the grid as train/validation/test files, via ``write(relative_path, text)``; the summary.

    All splits are fetched (or generated) and verified before anything is written: a failed download of the
    second split must not leave the first one's files behind."""
    data = params.data
    splits = {}
    for split in params.grid.splits:
        if data.source == "official":
            splits[split] = download_official_split(split, data.official_base_url, data.download_timeout_s)
        else:
            splits[split] = generate_split(split)
    summary: dict = {"source": data.source, "splits": {}}
    for split, pairs in splits.items():
        train, validation = hold_out_validation(pairs.train, data.validation_fraction, data.validation_seed)
        for part, rows in (("train", train), ("validation", validation), ("test", pairs.test)):
            write(f"{split}/{part}.txt", format_lines(rows))
        summary["splits"][split] = {
            "train_file_lines": len(pairs.train), "train_lines": len(train), "validation_lines": len(validation),
            "test_lines": len(pairs.test), "train_file_checksum": pairs_checksum(pairs.train),
            "test_checksum": pairs_checksum(pairs.test),
        }
    return summary


def load_split_files(folder: str | Path) -> dict[str, EncodedPairs]:
    folder = Path(folder)
    missing = [p for p in PARTS if not (folder / f"{p}.txt").exists()]
    if missing:
        raise DataError(f"{folder}: missing {missing}; run the scan_prepare stage first (dvc repro scan_prepare)")
    return {part: encode_pairs(read_pairs(folder / f"{part}.txt")) for part in PARTS}


def build_model(params: ScanParams, cell: str) -> Seq2Seq:
    m = params.model
    return Seq2Seq(cell, len(input_vocabulary()), len(output_vocabulary()), m.hidden_size, m.layers, m.dropout,
                   m.attention, m.source_length)


@torch.no_grad()
def correct_flags(model: Seq2Seq, data: EncodedPairs, params: ScanParams, method: str,
                  perms: tuple[VocabPermutation, VocabPermutation] | None = None, combination: str | None = None,
                  frame=None) -> list[bool]:
    """Per example, is ``method``'s decoding exactly right: ``greedy`` (the model as is), ``equitune``,
    ``equizero`` or ``frame`` (with the frame rule ``frame``)? ``combination`` defaults to
    ``scan.tune.combination``."""
    length = params.evaluate.max_output_length
    combination = params.tune.combination if combination is None else combination
    was_training = model.training
    model.eval()
    if method == "greedy":
        decode = lambda src: greedy_decode(model, src, length)  # noqa: E731
    elif method == "equitune":
        decode = lambda src: equituned_decode(model, src, length, *perms, combination=combination)  # noqa: E731
    elif method == "equizero":
        decode = lambda src: equizero_decode(model, src, length, *perms, proxy=params.tune.equizero_proxy)  # noqa: E731
    elif method == "frame":
        decode = lambda src: frame_decode(model, src, length, *perms, frame, combination=combination)  # noqa: E731
    else:
        raise ValueError(f"unknown decoding method {method!r}")
    result = match_flags(decode_batched(decode, data.src, params.evaluate.batch_size), data.target_lists)
    model.train(was_training)
    return result


def accuracy(model: Seq2Seq, data: EncodedPairs, params: ScanParams, method: str,
             perms: tuple[VocabPermutation, VocabPermutation] | None = None, combination: str | None = None,
             frame=None) -> float:
    """Exact-match accuracy of ``method`` decoding (:func:`correct_flags`)."""
    flags = correct_flags(model, data, params, method, perms, combination, frame)
    return sum(flags) / max(len(flags), 1)


def teacher_forced_equivariance_error(model: Seq2Seq, data: EncodedPairs, perms, equituned: bool,
                                      examples: int = 64, combination: str = "log_prob_mean", frame=None) -> float:
    """Largest |f(g.x) - g.f(x)| of the teacher-forced per-step log-probs, in float64, on the first examples.

    ``equituned=False`` measures the backbone itself (expected to be far from equivariant); with a frame rule
    ``frame`` (and ``equituned``) the model is averaged over each command's frame instead of the group."""
    input_perm, output_perm = perms
    backbone = Seq2Seq(model.cell, model.source_embedding.num_embeddings, model.target_embedding.num_embeddings,
                       model.hidden_size, model.layers, model.dropout.p, model.attention, model.source_length)
    backbone.load_state_dict(model.state_dict())
    backbone = backbone.double().eval()
    src, decoder_inputs, _ = make_batch(data, torch.arange(min(examples, len(data))))
    actions = (input_perm.on_ids, output_perm.on_ids)
    if equituned:
        if frame is None:
            wrapped = equitune_wrapper(combination)(backbone, actions, output_action=output_perm.on_scores)
        else:
            wrapped = frame_wrapper(combination)(backbone, actions, frame, output_action=output_perm.on_scores)
        return equivariance_error(wrapped.eval(), actions, (src, decoder_inputs), output_perm.on_scores)
    return equivariance_error(backbone, actions, (src, decoder_inputs), output_perm.on_scores)


@torch.no_grad()
def decoding_equivariance_fraction(model: Seq2Seq, data: EncodedPairs, params: ScanParams, perms,
                                   examples: int = 256) -> float:
    """Share of (command, group element) pairs whose transformed command decodes to the transformed output."""
    input_perm, output_perm = perms
    model.eval()
    length = params.evaluate.max_output_length
    combination = params.tune.combination
    src = data.src[:examples]
    reference = equituned_decode(model, src, length, input_perm, output_perm, combination)
    agree, total = 0, 0
    for g in input_perm.group:
        moved = equituned_decode(model, input_perm.on_ids.apply(src, g), length, input_perm, output_perm, combination)
        expected = output_perm.on_ids.apply(reference, g)
        width = max(moved.shape[1], expected.shape[1])
        moved = torch.nn.functional.pad(moved, (0, width - moved.shape[1]))
        expected = torch.nn.functional.pad(expected, (0, width - expected.shape[1]))
        agree += int((moved == expected).all(dim=1).sum())
        total += src.shape[0]
    return agree / total


class _Clock:
    """Wall and CPU seconds of a piece of work (CPU seconds stay meaningful on a shared machine)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def seconds(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu}


def pretrain_cell(params: ScanParams, cell: ScanCell, data: dict[str, EncodedPairs], generator: torch.Generator,
                  device: torch.device, log: Log, context: DistributedContext | None = None
                  ) -> tuple[dict, dict] | None:
    """Train the cell's plain seq2seq model; (checkpoint to save, metrics: the validation curve, the selected
    checkpoint's validation and test accuracy, the cost).

    The checkpoint is chosen on validation accuracy alone; its test accuracy is measured once, afterwards, for the
    report's "pretrained" column. Under torchrun (``context``) the ranks train one model with
    DistributedDataParallel; rank 0 alone measures the test accuracy and gets the result, the others None."""
    model = build_model(params, cell.cell)
    wrapped = context.wrap(model) if context is not None else model.to(device)
    history = []

    def on_validation(seen: int, loss: float, val_accuracy: float) -> None:
        history.append({"examples": seen, "train_loss": loss, "validation_accuracy": val_accuracy})
        log({"train_loss": loss, "validation_accuracy": val_accuracy}, seen)

    clock = _Clock()
    best_state, best_accuracy, best_at = pretrain(
        wrapped, data["train"], lambda m: accuracy(m, data["validation"], params, "greedy"), params.pretrain,
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
    return {"cell": cell.cell, "attention": params.model.attention, "state_dict": best_state}, metrics


def validation_overlap(model: Seq2Seq, data: dict[str, EncodedPairs], params: ScanParams) -> dict:
    """How many validation lines are copies of training lines (Add-Jump's hold-out draws some of the 1,467 bare
    "jump" lines), and the model's greedy validation accuracy on the whole hold-out and on its lines that do not
    occur in training (None when there are none). Reported only: model selection still uses the whole hold-out."""
    seen = lines_in(data["validation"], data["train"])
    flags = correct_flags(model, data["validation"], params, "greedy")
    unseen = [flag for flag, duplicate in zip(flags, seen, strict=True) if not duplicate]
    return {"lines": len(flags), "lines_in_training": sum(seen),
            "accuracy": sum(flags) / max(len(flags), 1),
            "deduplicated_accuracy": sum(unseen) / len(unseen) if unseen else None}


def load_pretrained(params: ScanParams, cell: ScanCell, model_dir: str | Path, device: torch.device) -> Seq2Seq:
    source = Path(model_dir) / CHECKPOINT
    if not source.exists():
        raise DataError(f"{source} not found; run scan_pretrain@{cell.name} first")
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    saved = checkpoint.get("attention", "input_feeding")
    if saved != params.model.attention:
        raise DataError(f"{source} was trained with scan.model.attention: {saved}, but params say "
                        f"{params.model.attention}; rerun scan_pretrain@{cell.name}")
    model = build_model(params, cell.cell)
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
    input_perm, output_perm = perms
    settings = params.tune
    steps, checkpoints = settings.steps[cell.split], settings.curve_for(cell.split)
    frame = scan_support_frame(settings.frame_excluded_words[cell.split], input_perm)
    metrics: dict = {
        "group_order": input_perm.group.order,
        "pretrained_equivariance_error": teacher_forced_equivariance_error(pretrained, data["validation"], perms,
                                                                           equituned=False),
        "frame_mean_size": float(frame_mask(frame, data["test"].src, input_perm).sum(dim=0).double().mean()),
    }
    actions = (input_perm.on_ids, output_perm.on_ids)
    curves: dict[str, dict[str, float]] = {}
    validation_curves: dict[str, dict[str, float]] = {}
    extra = _ExtraEvaluations(params, data, perms, frame)
    for method in ("equitune", "equizero"):
        clock = _Clock()
        generator = seed_generator()
        model = copy.deepcopy(pretrained)
        proxy = ProxyScore(settings.equizero_proxy) if method == "equizero" else None
        if method == "equitune":
            wrapper = equitune_wrapper(settings.combination)(model, actions, output_action=output_perm.on_scores)
        else:
            wrapper = EquiZero(model, actions, output_action=output_perm.on_scores, proxy=proxy)
        curve: dict[str, float] = {}
        validation: dict[int, float] = {}

        # Test accuracy at step 0 and at the last step are curve points, so each is decoded once.
        def on_checkpoint(step: int, method=method, model=model, curve=curve, validation=validation) -> None:
            timer = _Clock()
            value = accuracy(model, data["test"], params, method, perms)
            if step == steps:
                extra.speed[method] = {"commands": len(data["test"]), **timer.seconds()}
            curve[f"step_{step}_test_accuracy"] = value
            log({f"{method}_test_accuracy": value}, step)
            validation[step] = accuracy(model, data["validation"], params, method, perms)
            log({f"{method}_validation_accuracy": validation[step]}, step)
            if method == "equitune" and step in (0, steps):
                extra.evaluate(model, "0_steps" if step == 0 else "tuned", timed=step == steps)

        tune(wrapper, data["train"], settings, lr=settings.lr[cell.split], steps=steps, checkpoints=checkpoints,
             generator=generator, on_checkpoint=on_checkpoint, proxy=proxy, device=device, desc=method)
        model.eval()
        for key, step in ((f"{method}_0_steps", 0), (method, steps)):
            metrics[key] = {"test_accuracy": curve[f"step_{step}_test_accuracy"],
                            "validation_accuracy": validation[step]}
        metrics[f"{method}_cost"] = clock.seconds()
        curves[method] = curve
        validation_curves[method] = {f"step_{s}_validation_accuracy": validation[s] for s in sorted(validation)}
        if method == "equitune":
            metrics["equitune_cost"] = _minus(metrics["equitune_cost"], extra.cost)
            metrics["equitune_equivariance_error"] = teacher_forced_equivariance_error(
                model, data["validation"], perms, equituned=True, combination=settings.combination)
            metrics["equitune_decoding_equivariance_fraction"] = decoding_equivariance_fraction(
                model, data["test"], params, perms)
            metrics["equitune_combinations"] = {"configured": settings.combination, **extra.combinations(metrics)}
            metrics["frame_0_steps"] = extra.frame["0_steps"]
            metrics["frame_decoding_of_equitune"] = extra.frame["tuned"]
    framed = tune_through_frame(params, cell, data, pretrained, frame, metrics["frame_0_steps"], seed_generator(),
                                device, log)
    validation_curves["frame"] = framed.pop("validation_curve")
    metrics.update(framed)
    metrics["curve"] = curves
    metrics["validation_curve"] = validation_curves
    metrics["decoding_speed"] = extra.speed
    metrics["added_evaluation_cost"] = extra.cost
    log({f"{method}_{key}": value for method in (*curves, "frame") for key, value in metrics[f"{method}_cost"].items()},
        0)
    return metrics


def tune_through_frame(params: ScanParams, cell: TuneCell, data: dict[str, EncodedPairs], pretrained: Seq2Seq,
                       frame, zero_steps: dict[str, float], generator: torch.Generator, device: torch.device,
                       log: Log) -> dict:
    """The ``frame`` method tuned: the pretrained model trained through its own frame (the training loss on the
    frame average, only each command's frame copies through the model as one batch; the configured combination),
    with equitune's steps, lr, schedule and batches (``generator`` seeded from the cell like equitune's).

    Evaluated by frame decoding on the validation split at the curve steps and on the test split after the last
    step only (test decodes are the expensive part of a cell). Step 0 is the pretrained model, whose frame decoding
    ``zero_steps`` (``frame_0_steps``) already measured. Returns ``frame`` (test and validation accuracy),
    ``frame_cost`` (wall and CPU seconds with those evaluations; ``training_*``: without them),
    ``frame_equivariance_error`` (float64, teacher-forced) and ``validation_curve``."""
    input_perm, output_perm = perms = bind_scan_group(params.groups[cell.group])
    settings = params.tune
    steps = settings.steps[cell.split]
    clock = _Clock()
    model = copy.deepcopy(pretrained)
    wrapper = frame_wrapper(settings.combination)(model, (input_perm.on_ids, output_perm.on_ids), frame,
                                                  output_action=output_perm.on_scores)
    validation = {0: zero_steps["validation_accuracy"]}
    tuned = dict(zero_steps)
    evaluation = {"seconds": 0.0, "cpu_seconds": 0.0}
    log({"frame_test_accuracy": zero_steps["test_accuracy"], "frame_validation_accuracy": validation[0]}, 0)

    def on_checkpoint(step: int) -> None:
        timer = _Clock()
        validation[step] = accuracy(model, data["validation"], params, "frame", perms, frame=frame)
        values = {"frame_validation_accuracy": validation[step]}
        if step == steps:
            tuned.update(test_accuracy=accuracy(model, data["test"], params, "frame", perms, frame=frame),
                         validation_accuracy=validation[step])
            values["frame_test_accuracy"] = tuned["test_accuracy"]
        log(values, step)
        evaluation.update(_plus(evaluation, timer.seconds()))

    tune(wrapper, data["train"], settings, lr=settings.lr[cell.split], steps=steps,
         checkpoints=[s for s in settings.curve_for(cell.split) if s > 0], generator=generator,
         on_checkpoint=on_checkpoint, device=device, desc="frame")
    model.eval()
    total = clock.seconds()
    training = _minus(total, evaluation)
    return {"frame": tuned,
            "frame_cost": {**total, "training_seconds": training["seconds"],
                           "training_cpu_seconds": training["cpu_seconds"]},
            "frame_equivariance_error": teacher_forced_equivariance_error(
                model, data["validation"], perms, equituned=True, combination=settings.combination, frame=frame),
            "validation_curve": {f"step_{s}_validation_accuracy": validation[s] for s in sorted(validation)}}


class _ExtraEvaluations:
    """Evaluation-only additions to a tune cell on equitune's checkpoints: the combination rule that is not
    configured, and frame decoding; their wall and CPU seconds add up in :attr:`cost`."""

    def __init__(self, params: ScanParams, data: dict[str, EncodedPairs], perms, frame):
        self.params, self.data, self.perms, self.frame_rule = params, data, perms, frame
        self.other = [rule for rule in COMBINATIONS if rule != params.tune.combination]
        self.by_rule: dict[str, dict[str, dict[str, float]]] = {rule: {} for rule in self.other}
        self.frame: dict[str, dict[str, float]] = {}
        self.speed: dict[str, dict[str, float]] = {}
        self.cost = {"seconds": 0.0, "cpu_seconds": 0.0}

    def _both_parts(self, model: Seq2Seq, method: str, combination: str | None = None, timed: bool = False
                    ) -> dict[str, float]:
        timer = _Clock()
        test = accuracy(model, self.data["test"], self.params, method, self.perms, combination, self.frame_rule)
        if timed:
            self.speed[method] = {"commands": len(self.data["test"]), **timer.seconds()}
        validation = accuracy(model, self.data["validation"], self.params, method, self.perms, combination,
                              self.frame_rule)
        return {"test_accuracy": test, "validation_accuracy": validation}

    def evaluate(self, model: Seq2Seq, when: str, timed: bool) -> None:
        clock = _Clock()
        for rule in self.other:
            self.by_rule[rule][when] = self._both_parts(model, "equitune", rule)
        self.frame[when] = self._both_parts(model, "frame", timed=timed)
        self.cost = _plus(self.cost, clock.seconds())

    def combinations(self, metrics: dict) -> dict[str, dict[str, dict[str, float]]]:
        """Per rule, 0 steps and tuned accuracies; the configured rule's are the cell's equitune results."""
        configured = {"0_steps": metrics["equitune_0_steps"], "tuned": metrics["equitune"]}
        return {rule: configured if rule == self.params.tune.combination else self.by_rule[rule]
                for rule in COMBINATIONS}


def _plus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: a[key] + b[key] for key in a}


def _minus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: a[key] - b[key] for key in a}
