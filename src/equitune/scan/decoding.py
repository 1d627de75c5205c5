"""Greedy decoding of the plain, the equituned and the equizero seq2seq model, batched over examples and group.

- :func:`greedy_decode`: the pretrained model as it is.
- :func:`equituned_decode`: all |G| transformed copies of every command decode together as one ``[|G|*B]``
  batch; at each step the per-copy log-probabilities ``[|G|, B, V]`` are mapped back to the original frame with
  the output score action, averaged over the group axis, and the argmax is the token in the original frame.
  Copy ``g`` is then fed ``g . token``. This makes the decoder exactly equivariant.
  ``combination`` (:mod:`.combination`) says how: the mean of the log-probabilities (the paper's) or of the
  probabilities.
- :func:`frame_decode`: equituned decoding restricted to each command's frame (a bool mask ``[|G|, B]`` from a
  frame rule such as :func:`equitune.core.frames.support_frame`; an empty frame falls back to the group): only the
  frame's copies are encoded and decoded, and the combination runs over them alone. With the whole group as frame
  it is :func:`equituned_decode`, bitwise; it is exactly equivariant whenever the frame rule is.
- :func:`equizero_decode`: every copy decodes on its own (still one batch); per example the copy with the best
  proxy score (:mod:`equitune.core.proxies`, averaged over its own steps up to its ``<eos>``) is chosen and its
  sequence mapped back by ``g^-1``.

Every sequence stops at its own ``<eos>``; what follows is padding. Outputs are token ids ``[B, L]`` including
the ``<eos>`` (when produced within ``max_length`` steps).

Threads: a decoding step on few rows is a handful of tiny kernels, and a second OpenMP thread only adds
synchronisation (measured on 2 idle cores, benchmarks/results/sequence_batching.json: the group-batched decoder
took 5.36 s with 2 threads and 1.55 s with 1 thread at batch 1, and 1 thread was still faster at 256 and 512
rows). So a decode of fewer than :data:`SINGLE_THREAD_BELOW_ROWS` rows (|G| x batch) runs on one thread, whatever
the caller's setting; larger ones use the caller's thread count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.nn import functional as F

from ..core.frames import FrameAverage, FrameRule
from ..core.groups import VocabPermutation
from ..core.proxies import example_scores, get_proxy
from ..core.wrappers import share_scores_of_identical_copies
from .combination import combine_copies
from .model import PAD_ID, Seq2Seq

__all__ = ["SOS_ID", "EOS_ID", "MAX_ROWS_PER_CALL", "SINGLE_THREAD_BELOW_ROWS", "decode_batched", "decoding_threads", "equituned_decode",
           "equizero_decode", "exact_match", "frame_decode", "frame_mask", "greedy_decode", "match_flags"]

SOS_ID, EOS_ID = 1, 2
SINGLE_THREAD_BELOW_ROWS = 1024
MAX_ROWS_PER_CALL = 2048


@contextmanager
def decoding_threads(rows: int) -> Iterator[int]:
    """Run a decode of ``rows`` rows on one thread when it is small (see the module notes); yields the count."""
    previous = torch.get_num_threads()
    wanted = 1 if rows < SINGLE_THREAD_BELOW_ROWS else previous
    if wanted != previous:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if wanted != previous:
            torch.set_num_threads(previous)


def _decode(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation | None,
            output_perm: VocabPermutation | None, average: bool, proxy: str = "max_log_prob",
            combination: str = "log_prob_mean", frame: FrameRule | None = None):
    order = 1 if input_perm is None else input_perm.group.order
    examples_per_call = max(1, MAX_ROWS_PER_CALL // order)
    if src.shape[0] > examples_per_call:
        parts = [_decode(model, src[start:start + examples_per_call], max_length, input_perm, output_perm, average,
                         proxy, combination, frame) for start in range(0, src.shape[0], examples_per_call)]
        width = max(part.shape[1] for part in parts)
        return torch.cat([F.pad(part, (0, width - part.shape[1]), value=PAD_ID) for part in parts])
    mask = None if frame is None else frame_mask(frame, src, input_perm)
    rows = order * src.shape[0] if mask is None else int(mask.sum())
    with decoding_threads(rows):
        return _decode_rows(model, src, max_length, input_perm, output_perm, average, proxy, combination, mask)


def frame_mask(frame: FrameRule, src: torch.Tensor, input_perm: VocabPermutation) -> torch.Tensor:
    """Each command's frame as a bool mask ``[|G|, B]``, an empty frame replaced by the whole group (the core
    :class:`~equitune.core.frames.FrameAverage` rule, so decoding and the wrapper agree)."""
    return FrameAverage(torch.nn.Identity(), input_perm.on_ids, frame).frame_mask(src)


@torch.no_grad()
def _decode_rows(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation | None,
                 output_perm: VocabPermutation | None, average: bool, proxy: str, combination: str = "log_prob_mean",
                 mask: torch.Tensor | None = None):
    """Shared loop. With ``average`` the copies share one combined sequence per example (equitune; with ``mask``
    only the frame's copies run and count); without, each copy keeps its own sequence (plain greedy when there is
    no group, equizero otherwise)."""
    per_step = get_proxy(proxy)
    batch = src.shape[0]
    order = 1 if input_perm is None else input_perm.group.order
    sources = src.unsqueeze(0) if input_perm is None else input_perm.on_ids.transform_all(src)
    # The frame's (element, example) pairs, element-major: with the whole group, the same rows in the same order.
    in_frame = None if mask is None else mask.nonzero(as_tuple=True)
    encoded = model.encode(sources.reshape(order * batch, -1) if in_frame is None else sources[in_frame])
    hidden = encoded.hidden
    rows = batch if average else order * batch
    tokens = torch.full((rows,), SOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=src.device)
    outputs, scores, alive = [], [], []
    for _ in range(max_length):
        inputs = output_perm.on_ids.transform_all(tokens).reshape(-1) if average and output_perm else tokens
        if in_frame is not None:
            inputs = inputs.view(order, batch)[in_frame]
        log_probs, hidden = model.decode_step(inputs, hidden, encoded)
        if average:
            if in_frame is None:
                stacked = log_probs.view(order, batch, -1)
            else:
                stacked = log_probs.new_zeros(order, batch, log_probs.shape[-1])
                stacked[in_frame] = log_probs
            if output_perm is not None:
                stacked = output_perm.on_scores.untransform_all(stacked)
            log_probs = combine_copies(stacked, combination, mask)
        elif input_perm is not None:  # equizero: score every copy's own step
            scores.append(per_step(log_probs))
            alive.append(~finished)
        chosen = log_probs.argmax(dim=-1).masked_fill(finished, PAD_ID)
        outputs.append(chosen)
        finished = finished | (chosen == EOS_ID)
        tokens = chosen
        if bool(finished.all()):
            break
    sequences = torch.stack(outputs, dim=1)
    if average or input_perm is None:
        return sequences
    # equizero: the copy whose own sequence scores best, mapped back to the original frame by g^-1.
    step_scores = torch.stack(scores, dim=1).view(order, batch, -1)
    per_copy = example_scores(step_scores, torch.stack(alive, dim=1).view(order, batch, -1))
    sequences = sequences.view(order, batch, -1)
    if output_perm is not None:
        sequences = output_perm.on_ids.untransform_all(sequences)
    best = share_scores_of_identical_copies(sources, per_copy).argmin(dim=0)
    return sequences[best, torch.arange(batch, device=src.device)]


def greedy_decode(model: Seq2Seq, src: torch.Tensor, max_length: int) -> torch.Tensor:
    return _decode(model, src, max_length, None, None, average=False)


def equituned_decode(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation,
                     output_perm: VocabPermutation, combination: str = "log_prob_mean") -> torch.Tensor:
    return _decode(model, src, max_length, input_perm, output_perm, average=True, combination=combination)


def frame_decode(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation,
                 output_perm: VocabPermutation, frame: FrameRule, combination: str = "log_prob_mean") -> torch.Tensor:
    """Equituned decoding over each command's frame only (``frame(src) -> [|G|, B]`` bool; see the module notes)."""
    return _decode(model, src, max_length, input_perm, output_perm, average=True, combination=combination,
                   frame=frame)


def equizero_decode(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation,
                    output_perm: VocabPermutation, proxy: str = "max_log_prob") -> torch.Tensor:
    return _decode(model, src, max_length, input_perm, output_perm, average=False, proxy=proxy)


def decode_batched(decode, src: torch.Tensor, batch_size: int) -> list[list[int]]:
    """Run ``decode(src_chunk) -> [b, L]`` over chunks; returns each sequence up to and including ``<eos>``."""
    sequences: list[list[int]] = []
    for start in range(0, src.shape[0], batch_size):
        chunk = src[start:start + batch_size]
        chunk = chunk[:, : int((chunk != PAD_ID).sum(dim=1).max())]  # drop all-padding columns
        for row in decode(chunk).tolist():
            sequences.append(row[: row.index(EOS_ID) + 1] if EOS_ID in row else [t for t in row if t != PAD_ID])
    return sequences


def match_flags(predicted: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[bool]:
    """Per sequence: is it equal to its target (whole sequence, ``<eos>`` included)?"""
    if len(predicted) != len(targets):
        raise ValueError(f"{len(predicted)} predictions for {len(targets)} targets")
    return [list(p) == list(t) for p, t in zip(predicted, targets, strict=True)]


def exact_match(predicted: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> float:
    """Fraction of sequences equal to their target (whole sequence, ``<eos>`` included)."""
    return sum(match_flags(predicted, targets)) / max(len(targets), 1)
