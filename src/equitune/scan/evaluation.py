"""How a SCAN model is evaluated: exact-match accuracy of each decoding method, the equivariance probes, the
validation hold-out's overlap with training, and the evaluation-only additions to a tune cell.

:data:`DECODERS` is the one place where a method's name picks its decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.checks import equivariance_error
from ..core.frames import FrameRule
from ..core.groups import VocabPermutation
from .clock import Clock, Seconds, add_seconds
from .combination import COMBINATIONS, equitune_wrapper, frame_wrapper
from .config import ScanParams
from .decoding import decode_batched, equituned_decode, equizero_decode, frame_decode, greedy_decode, match_flags
from .model import Seq2Seq
from .training import EncodedPairs, lines_in, make_batch

__all__ = ["DECODERS", "Decoding", "ExtraEvaluations", "accuracy", "correct_flags", "decoder",
           "decoding_equivariance_fraction", "teacher_forced_equivariance_error", "validation_overlap"]

Perms = tuple[VocabPermutation, VocabPermutation]
"""(input permutation, output permutation) of a group bound to the SCAN vocabularies."""
Decode = Callable[[torch.Tensor], torch.Tensor]
"""``decode(src) -> [N, L]`` output token ids of a batch of commands."""


@dataclass(frozen=True)
class Decoding:
    """What a decoding method needs beside the model; a method reads only its own fields (``perms`` for all but
    greedy, ``combination`` for equitune and frame, ``proxy`` for equizero, ``frame`` for frame)."""

    max_length: int
    perms: Perms | None = None
    combination: str = "log_prob_mean"
    proxy: str = "max_log_prob"
    frame: FrameRule | None = None


def _greedy(model: Seq2Seq, how: Decoding) -> Decode:
    return lambda src: greedy_decode(model, src, how.max_length)


def _equitune(model: Seq2Seq, how: Decoding) -> Decode:
    return lambda src: equituned_decode(model, src, how.max_length, *how.perms, combination=how.combination)


def _equizero(model: Seq2Seq, how: Decoding) -> Decode:
    return lambda src: equizero_decode(model, src, how.max_length, *how.perms, proxy=how.proxy)


def _frame(model: Seq2Seq, how: Decoding) -> Decode:
    return lambda src: frame_decode(model, src, how.max_length, *how.perms, how.frame, combination=how.combination)


DECODERS: dict[str, Callable[[Seq2Seq, Decoding], Decode]] = {
    "greedy": _greedy, "equitune": _equitune, "equizero": _equizero, "frame": _frame}
"""Method name -> decoder factory ``(model, decoding) -> decode``: ``greedy`` (the model as is), ``equitune``
(the group's copies combined), ``equizero`` (the proxy's best copy) or ``frame`` (each command's frame copies)."""


def decoder(method: str, model: Seq2Seq, how: Decoding) -> Decode:
    """``method``'s decoding of ``model`` (:data:`DECODERS`)."""
    if method not in DECODERS:
        raise ValueError(f"unknown decoding method {method!r}; allowed: {', '.join(DECODERS)}")
    return DECODERS[method](model, how)


@torch.no_grad()
def correct_flags(model: Seq2Seq, data: EncodedPairs, params: ScanParams, method: str, perms: Perms | None = None,
                  combination: str | None = None, frame: FrameRule | None = None) -> list[bool]:
    """Per example, is ``method``'s decoding (:data:`DECODERS`; ``frame`` with the frame rule ``frame``) exactly
    right? ``combination`` defaults to ``scan.tune.combination``."""
    combination = params.tune.combination if combination is None else combination
    how = Decoding(params.evaluation.max_output_length, perms, combination, params.tune.equizero_proxy, frame)
    decode = decoder(method, model, how)
    was_training = model.training
    model.eval()
    result = match_flags(decode_batched(decode, data.src, params.evaluation.batch_size), data.target_lists)
    model.train(was_training)
    return result


def accuracy(model: Seq2Seq, data: EncodedPairs, params: ScanParams, method: str, perms: Perms | None = None,
             combination: str | None = None, frame: FrameRule | None = None) -> float:
    """Exact-match accuracy of ``method`` decoding (:func:`correct_flags`)."""
    flags = correct_flags(model, data, params, method, perms, combination, frame)
    return sum(flags) / max(len(flags), 1)


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


def teacher_forced_equivariance_error(model: Seq2Seq, data: EncodedPairs, perms: Perms, equituned: bool,
                                      examples: int = 64, combination: str = "log_prob_mean",
                                      frame: FrameRule | None = None) -> float:
    """Largest |f(g.x) - g.f(x)| of the teacher-forced per-step log-probs, in float64, on the first examples.

    ``equituned=False`` measures the backbone itself (expected to be far from equivariant); with a frame rule
    ``frame`` (and ``equituned``) the model is averaged over each command's frame instead of the group."""
    input_perm, output_perm = perms
    backbone = Seq2Seq(model.rnn, model.source_embedding.num_embeddings, model.target_embedding.num_embeddings,
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
def decoding_equivariance_fraction(model: Seq2Seq, data: EncodedPairs, params: ScanParams, perms: Perms,
                                   examples: int = 256) -> float:
    """Share of (command, group element) pairs whose transformed command decodes (equituned) to the transformed
    output."""
    input_perm, output_perm = perms
    model.eval()
    decode = decoder("equitune", model, Decoding(params.evaluation.max_output_length, perms, params.tune.combination))
    src = data.src[:examples]
    reference = decode(src)
    agree, total = 0, 0
    for g in input_perm.group:
        moved = decode(input_perm.on_ids.apply(src, g))
        expected = output_perm.on_ids.apply(reference, g)
        width = max(moved.shape[1], expected.shape[1])
        moved = torch.nn.functional.pad(moved, (0, width - moved.shape[1]))
        expected = torch.nn.functional.pad(expected, (0, width - expected.shape[1]))
        agree += int((moved == expected).all(dim=1).sum())
        total += src.shape[0]
    return agree / total


class ExtraEvaluations:
    """Evaluation-only additions to a tune cell on equitune's checkpoints: the combination rule that is not
    configured, and frame decoding; their wall and CPU seconds add up in :attr:`cost`."""

    def __init__(self, params: ScanParams, data: dict[str, EncodedPairs], perms: Perms, frame: FrameRule):
        self.params, self.data, self.perms, self.frame_rule = params, data, perms, frame
        self.other = [rule for rule in COMBINATIONS if rule != params.tune.combination]
        self.by_rule: dict[str, dict[str, dict[str, float]]] = {rule: {} for rule in self.other}
        self.frame: dict[str, dict[str, float]] = {}
        self.speed: dict[str, dict[str, float]] = {}
        self.cost: Seconds = {"seconds": 0.0, "cpu_seconds": 0.0}

    def _both_parts(self, model: Seq2Seq, method: str, combination: str | None = None, timed: bool = False
                    ) -> dict[str, float]:
        timer = Clock()
        test = accuracy(model, self.data["test"], self.params, method, self.perms, combination, self.frame_rule)
        if timed:
            self.speed[method] = {"commands": len(self.data["test"]), **timer.seconds()}
        validation = accuracy(model, self.data["validation"], self.params, method, self.perms, combination,
                              self.frame_rule)
        return {"test_accuracy": test, "validation_accuracy": validation}

    def evaluate(self, model: Seq2Seq, when: str, timed: bool) -> None:
        clock = Clock()
        for rule in self.other:
            self.by_rule[rule][when] = self._both_parts(model, "equitune", rule)
        self.frame[when] = self._both_parts(model, "frame", timed=timed)
        self.cost = add_seconds(self.cost, clock.seconds())

    def combinations(self, metrics: dict) -> dict[str, dict[str, dict[str, float]]]:
        """Per rule, 0 steps and tuned accuracies; the configured rule's are the cell's equitune results."""
        configured = {"0_steps": metrics["equitune_0_steps"], "tuned": metrics["equitune"]}
        return {rule: configured if rule == self.params.tune.combination else self.by_rule[rule]
                for rule in COMBINATIONS}
