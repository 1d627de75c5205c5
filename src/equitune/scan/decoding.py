"""Greedy decoding of the plain, the equituned and the equizero seq2seq model, batched over examples and group.

- :func:`greedy_decode`: the pretrained model as it is.
- :func:`equituned_decode`: all |G| transformed copies of every command decode together as one ``[|G|*B]``
  batch; at each step the per-copy log-probabilities ``[|G|, B, V]`` are mapped back to the original frame with
  the output score action, averaged over the group axis, and the argmax is the token in the original frame.
  Copy ``g`` is then fed ``g . token``. This makes the decoder exactly equivariant.
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

from ..core.groups import VocabPermutation
from ..core.proxies import example_scores, get_proxy
from .model import PAD_ID, Seq2Seq

__all__ = ["SOS_ID", "EOS_ID", "MAX_ROWS_PER_CALL", "SINGLE_THREAD_BELOW_ROWS", "decode_batched", "decoding_threads", "equituned_decode",
           "equizero_decode", "exact_match", "greedy_decode"]

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
            output_perm: VocabPermutation | None, average: bool, proxy: str = "max_log_prob"):
    order = 1 if input_perm is None else input_perm.group.order
    examples_per_call = max(1, MAX_ROWS_PER_CALL // order)
    if src.shape[0] > examples_per_call:
        parts = [_decode(model, src[start:start + examples_per_call], max_length, input_perm, output_perm, average,
                         proxy) for start in range(0, src.shape[0], examples_per_call)]
        width = max(part.shape[1] for part in parts)
        return torch.cat([F.pad(part, (0, width - part.shape[1]), value=PAD_ID) for part in parts])
    with decoding_threads(order * src.shape[0]):
        return _decode_rows(model, src, max_length, input_perm, output_perm, average, proxy)


@torch.no_grad()
def _decode_rows(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation | None,
                 output_perm: VocabPermutation | None, average: bool, proxy: str):
    """Shared loop. With ``average`` the copies share one averaged sequence per example (equitune); without,
    each copy keeps its own sequence (plain greedy when there is no group, equizero otherwise)."""
    per_step = get_proxy(proxy)
    batch = src.shape[0]
    order = 1 if input_perm is None else input_perm.group.order
    sources = src.unsqueeze(0) if input_perm is None else input_perm.on_ids.transform_all(src)
    encoded = model.encode(sources.reshape(order * batch, -1))
    hidden = encoded.hidden
    rows = batch if average else order * batch
    tokens = torch.full((rows,), SOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=src.device)
    outputs, scores, alive = [], [], []
    for _ in range(max_length):
        inputs = output_perm.on_ids.transform_all(tokens).reshape(-1) if average and output_perm else tokens
        log_probs, hidden = model.decode_step(inputs, hidden, encoded)
        if average:
            stacked = log_probs.view(order, batch, -1)
            if output_perm is not None:
                stacked = output_perm.on_scores.untransform_all(stacked)
            log_probs = stacked.mean(dim=0)
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
    best = _first_of_tied_copies(sources, per_copy).argmin(dim=0)
    return sequences[best, torch.arange(batch, device=src.device)]


def _first_of_tied_copies(sources: torch.Tensor, per_copy: torch.Tensor) -> torch.Tensor:
    """``per_copy`` [|G|, B] with each copy's score replaced by that of the first copy with the same command.

    A group element that fixes a command (``g x = x``: a command without any group word) gives a copy that decodes
    the same sequence with the same score in exact arithmetic, and a different answer once mapped back by ``g^-1``.
    In floating point the two rows of one batch can differ in the last bit (measured: float64 GRU, one command in
    eleven), so argmin would pick among them by the batch's layout. With equal scores argmin takes the lowest
    group element, whatever the batch.
    """
    same = (sources.unsqueeze(0) == sources.unsqueeze(1)).all(dim=-1)  # [|G| (j), |G| (k), B]: copy j == copy k
    first = same.int().argmax(dim=0)  # for each copy k, the first copy j with the same command
    return per_copy.gather(0, first)


def greedy_decode(model: Seq2Seq, src: torch.Tensor, max_length: int) -> torch.Tensor:
    return _decode(model, src, max_length, None, None, average=False)


def equituned_decode(model: Seq2Seq, src: torch.Tensor, max_length: int, input_perm: VocabPermutation,
                     output_perm: VocabPermutation) -> torch.Tensor:
    return _decode(model, src, max_length, input_perm, output_perm, average=True)


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


def exact_match(predicted: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> float:
    """Fraction of sequences equal to their target (whole sequence, ``<eos>`` included)."""
    if len(predicted) != len(targets):
        raise ValueError(f"{len(predicted)} predictions for {len(targets)} targets")
    return sum(list(p) == list(t) for p, t in zip(predicted, targets, strict=True)) / max(len(targets), 1)
