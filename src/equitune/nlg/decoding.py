"""One decoder for many samples at once: every method and axis in large batches, identical work done once.

A *stream* is one sample to draw: a prompt, a method (base / EquiLM / R-EquiLM), the axis's vocabulary permutation
and general-word mask, and its own uniform random numbers (one per step). A stream needs |G| model rows (the
transformed contexts ``g . x``; one for the base method). Streams are decoded ``batch_rows`` rows at a time, and
within a batch a model row is identified by what it has been fed: (prefilled context, tokens fed so far). Rows
with the same identity are computed once and shared, which is exact (the same input gives the same output) and
removes a lot of work in this experiment:

- the prefill: every distinct context is run once for all streams (all seeds, samples, methods);
- EquiLM pairs: the |G| contexts of "The man ..." are "The man ..." and "The woman ...", exactly the contexts of
  the woman's EquiLM stream; with common random numbers both streams feed the same tokens to the same contexts,
  so their rows coincide for as long as their samples are group images of each other;
- R-EquiLM on an axis without general words is EquiLM, and their rows coincide too;
- streams that have stopped (newline or end of text) are dropped from the batch;
- CanonLM (:mod:`.canon`) runs one row per stream, from the canonical context ``g* . prompt``, fed the canonical
  frame's tokens: its paired streams, and the base model's stream of the canonical demographic, share that row.

Each stream still combines its own rows and samples its own token from its own distribution: sharing changes what
is computed, never what is sampled. Call :func:`decode` with streams in an order that puts the streams that share
rows next to each other (the NLG sampler orders them by template, seed and sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..core.groups import VocabPermutation
from .backbone import as_backbone
from .canon import CanonicalFrame
from .equilm import combine_group_log_probs, sample_top_k

__all__ = ["DecodeStats", "Generation", "ONE_ROW_METHODS", "Stream", "decode", "generate"]

ONE_ROW_METHODS = ("base", "canonlm")
"""Methods that run one backbone row per sample (the others run |G|)."""


@dataclass(frozen=True)
class Stream:
    """One sample to draw. Streams with the same ``method``, ``permutation`` object and ``general_mask`` object
    are combined and sampled together as one block."""

    prompt: tuple[int, ...]
    method: str
    uniform: torch.Tensor  # [steps] float64 in [0, 1)
    permutation: VocabPermutation | None = None
    general_mask: torch.Tensor | None = None
    frame: CanonicalFrame | None = None  # canonlm only (its permutation is the frame's)

    @property
    def order(self) -> int:
        return 1 if self.method in ONE_ROW_METHODS else self.permutation.group.order

    def contexts(self) -> list[tuple[int, ...]]:
        """The |G| contexts the stream's rows start from (row g: ``g . prompt``; row 0 is the prompt itself);
        CanonLM's one row starts from the canonical context ``g* . prompt``."""
        if self.method == "base":
            return [self.prompt]
        if self.method == "canonlm":
            return [self.frame.canonical_context(self.prompt)]
        ids = torch.tensor(self.prompt, dtype=torch.long)
        return [tuple(self.permutation.permutations[g][ids].tolist()) for g in range(self.order)]


@dataclass
class DecodeStats:
    """What was computed: model rows the streams asked for vs rows actually run, for the prefill and the steps."""

    requested_prefill_rows: int = 0
    prefill_rows: int = 0
    prefill_tokens: int = 0
    requested_row_steps: int = 0
    computed_row_steps: int = 0
    generated_tokens: int = 0
    batches: int = 0
    log_probs: list = field(default_factory=list)  # per stream [length, V], only with keep_log_probs

    @property
    def shared_fraction(self) -> float:
        """Fraction of the decoding steps' model rows that were shared instead of computed."""
        return 1.0 - self.computed_row_steps / max(1, self.requested_row_steps)


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in sequences], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
    return ids, mask


def _batches(streams: Sequence[Stream], batch_rows: int) -> list[range]:
    """Consecutive runs of streams with at most ``batch_rows`` model rows each (a stream is never split)."""
    runs, start, rows = [], 0, 0
    for i, stream in enumerate(streams):
        if rows and rows + stream.order > batch_rows:
            runs.append(range(start, i))
            start, rows = i, 0
        rows += stream.order
    if start < len(streams):
        runs.append(range(start, len(streams)))
    return runs


def _check(streams: Sequence[Stream], pad_id: int) -> int:
    steps = {int(s.uniform.shape[0]) for s in streams}
    if len(steps) != 1:
        raise ValueError(f"all streams must have the same number of steps; got {sorted(steps)}")
    for stream in streams:
        if stream.method not in ("base", "equilm", "r_equilm", "canonlm"):
            raise ValueError(f"unknown method {stream.method!r}; allowed: base, equilm, r_equilm, canonlm")
        if stream.method == "canonlm" and (stream.frame is None or stream.frame.permutation is not stream.permutation):
            raise ValueError("method 'canonlm' needs a canonical frame of the stream's permutation")
        if stream.method != "base":
            if stream.permutation is None:
                raise ValueError(f"method {stream.method!r} needs a vocabulary permutation")
            if int(stream.permutation.permutations[:, pad_id].ne(pad_id).sum()):
                raise ValueError("the pad token is moved by the group; pad with a token outside the equality words")
    return steps.pop()


@torch.no_grad()
def decode(backbone, streams: Sequence[Stream], *, top_k: int, stop_mask: torch.Tensor, pad_id: int,
           batch_rows: int = 512, device: torch.device | str = "cpu", keep_log_probs: bool = False,
           progress: Callable[[int], None] | None = None, average: str = "log_probs"
           ) -> tuple[list[list[int]], DecodeStats]:
    """The sampled tokens of every stream (up to and including its stop token), in the order given, and what was
    computed. With ``keep_log_probs`` the stats also hold each stream's distributions ``[length, V]`` (tests).
    ``average``: the group-average rule (:func:`~equitune.nlg.equilm.combine_group_log_probs`)."""
    if not streams:
        return [], DecodeStats()
    steps = _check(streams, pad_id)
    contexts: dict[tuple[int, ...], int] = {}
    stream_contexts = [[contexts.setdefault(c, len(contexts)) for c in s.contexts()] for s in streams]
    ids, mask = _left_pad(list(contexts), pad_id)
    first_log_probs, first_state = backbone.start(ids.to(device), mask.to(device))
    stats = DecodeStats(requested_prefill_rows=sum(s.order for s in streams), prefill_rows=len(contexts),
                        prefill_tokens=int(mask.sum()))
    results: list[list[int]] = [[] for _ in streams]
    kept: list[list[torch.Tensor]] = [[] for _ in streams]
    for run in _batches(streams, batch_rows):
        batch = _Batch(backbone, [streams[i] for i in run], [stream_contexts[i] for i in run], stop_mask.cpu(),
                       pad_id, device, keep_log_probs, average)
        tokens, log_probs = batch.run(first_log_probs, first_state, top_k, steps, stats)
        for j, i in enumerate(run):
            results[i] = tokens[j]
            kept[i] = log_probs[j]
        stats.batches += 1
        if progress is not None:
            progress(len(run))
    stats.generated_tokens = sum(len(r) for r in results)
    if keep_log_probs:
        stats.log_probs = [torch.stack(k) for k in kept]
    return results, stats


class _Batch:
    """One decoding batch. Its streams are laid out in blocks that combine alike (same method, group, general
    words); in a block of n streams, row g of stream j is row ``offset + g * n + j``, so the block's rows reshape
    to ``[|G|, n, V]``. Each model row is identified by (computed row it continues, token fed); rows with one
    identity share one computed row: ``computed_of_row[r]`` says which."""

    def __init__(self, backbone, streams, contexts, stop_mask, pad_id, device, keep_log_probs, average):
        self.backbone, self.streams, self.stop_mask = backbone, streams, stop_mask
        self.pad_id, self.device, self.keep_log_probs, self.average = pad_id, device, keep_log_probs, average
        # CanonLM: each stream's frame element (-1 until its context holds an equality token).
        self.frame_element = torch.tensor([s.frame.first_element(s.prompt) if s.method == "canonlm" else -1
                                           for s in streams], dtype=torch.long)
        groups: dict[tuple, list[int]] = {}
        for j, s in enumerate(streams):
            groups.setdefault((s.method, id(s.permutation), id(s.general_mask), id(s.frame)), []).append(j)
        self.blocks = []  # (stream indices, order, first row)
        row_context: list[int] = []
        for members in groups.values():
            order = streams[members[0]].order
            self.blocks.append((members, order, len(row_context)))
            for g in range(order):
                row_context += [contexts[j][g] for j in members]
        self.row_context = torch.tensor(row_context)

    def run(self, first_log_probs, first_state, top_k, steps, stats):
        rows = self.row_context.shape[0]
        computed, computed_of_row = self.row_context.unique(return_inverse=True)
        state = self.backbone.select(first_state, computed.to(self.device))
        log_probs = first_log_probs[computed.to(first_log_probs.device)]
        finished = torch.zeros(len(self.streams), dtype=torch.bool)
        sampled = torch.full((len(self.streams), steps), self.pad_id, dtype=torch.long)
        kept: list[list[torch.Tensor]] = [[] for _ in self.streams]
        for step in range(steps):
            fed = torch.full((rows,), self.pad_id, dtype=torch.long)
            live = torch.zeros(rows, dtype=torch.bool)
            for members, order, offset in self.blocks:
                index = torch.tensor(members)
                block = slice(offset, offset + order * len(members))
                token, moved = self._sample_block(members, order,
                                                  log_probs[computed_of_row[block].to(log_probs.device)], step, top_k,
                                                  finished[index], kept)
                sampled[index, step] = token
                finished[index] |= self.stop_mask[token]
                fed[block] = moved.reshape(-1)
                live[block] = (~finished[index]).repeat(order)
            if step == steps - 1 or not bool(live.any()):
                break
            # Rows of finished streams are dropped; the others continue their computed row with the token fed.
            live_rows = live.nonzero().squeeze(1)
            width = self.stop_mask.shape[0] + 1
            keys = computed_of_row[live_rows] * width + fed[live_rows]
            unique_keys, inverse = keys.unique(return_inverse=True)
            parents = unique_keys // width
            if parents.shape[0] != log_probs.shape[0] or not torch.equal(parents, torch.arange(parents.shape[0])):
                state = self.backbone.select(state, parents.to(self.device))
            log_probs, state = self.backbone.step(state, (unique_keys % width).to(self.device))
            stats.requested_row_steps += int(live_rows.shape[0])
            stats.computed_row_steps += int(unique_keys.shape[0])
            computed_of_row = torch.zeros(rows, dtype=torch.long)
            computed_of_row[live_rows] = inverse
        tokens = [_until_stop(row, self.stop_mask) for row in sampled.tolist()]
        return tokens, kept

    def _sample_block(self, members, order, rows, step, top_k, done, kept) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's sampled tokens ``[n]`` (the pad id for finished streams) and the tokens its rows are fed
        ``[order, n]``."""
        first = self.streams[members[0]]
        rows = rows.reshape(order, len(members), -1)
        uniform = torch.stack([self.streams[j].uniform[step] for j in members]).to(rows.device)
        if first.method == "canonlm":
            token, fed, combined = self._sample_canonical(members, rows[0], uniform, top_k, done)
        else:
            if first.method != "base":
                rows = first.permutation.on_scores.untransform_all(rows)
            combined = combine_group_log_probs(rows, first.method, first.general_mask, self.average)
            token = torch.where(done, self.pad_id, sample_top_k(combined, top_k, uniform).cpu())
            fed = token.unsqueeze(0) if first.method == "base" else first.permutation.on_ids.transform_all(token)
        if self.keep_log_probs:
            for position, j in enumerate(members):
                if not done[position]:
                    kept[j].append(combined[position].cpu())
        return token, fed

    def _sample_canonical(self, members, rows, uniform, top_k, done):
        """CanonLM: ``rows [n, V]`` are the backbone's log-probs of the canonical contexts. A stream with a frame
        samples there and moves the token back; one without (no equality token yet: its context is fixed by the
        group) samples from the group average, and its first equality token sets the frame."""
        frame = self.streams[members[0]].frame
        perms = frame.permutation.permutations
        index = torch.tensor(members)
        element = self.frame_element[index]
        canonical = sample_top_k(rows, top_k, uniform).cpu()
        token = frame.inverse_ids[element.clamp(min=0), canonical]
        free = element < 0
        combined = None
        if self.keep_log_probs:
            combined = rows.gather(-1, perms.to(rows.device)[element.clamp(min=0)])  # g*^-1 . y = y[..., pi_g*]
        if bool(free.any()):
            order = frame.permutation.group.order
            copies = frame.permutation.on_scores.untransform_all(rows[free.to(rows.device)].unsqueeze(0).expand(
                order, -1, -1))
            averaged = combine_group_log_probs(copies, "equilm", average=self.average)
            drawn = sample_top_k(averaged, top_k, uniform[free.to(uniform.device)]).cpu()
            found = frame.element[drawn]
            token[free] = drawn
            canonical[free] = torch.where(found >= 0, perms[found.clamp(min=0), drawn], drawn)
            self.frame_element[index[free]] = found
            if combined is not None:
                combined[free.to(rows.device)] = averaged
        pad = torch.full_like(token, self.pad_id)
        return torch.where(done, pad, token), torch.where(done, pad, canonical).unsqueeze(0), combined


def _until_stop(row: list[int], stop_mask: torch.Tensor) -> list[int]:
    """The sampled tokens up to and including the first stop token (the padding after it is not part of it)."""
    for k, token in enumerate(row):
        if bool(stop_mask[token]):
            return row[:k + 1]
    return row


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, steps] sampled ids in the original frame; `pad_id` after the stop token
    lengths: torch.Tensor  # [B] tokens up to and including the stop token
    log_probs: torch.Tensor | None = None  # [B, steps, V] the method's distributions (when asked for; 0 after stop)


def generate(model, prompt_ids: torch.Tensor, attention_mask: torch.Tensor, method: str,
             permutation: VocabPermutation | None, uniform: torch.Tensor, *, top_k: int, stop_mask: torch.Tensor,
             pad_id: int, general_mask: torch.Tensor | None = None, return_log_probs: bool = False,
             batch_rows: int | None = None, frame: CanonicalFrame | None = None,
             average: str = "log_probs") -> Generation:
    """Sample up to ``uniform.shape[1]`` new tokens for left-padded prompts ``[B, L]`` with one method: the
    :func:`decode` of one stream per prompt, as tensors. ``model``: a backbone or a transformers causal LM."""
    lengths = attention_mask.sum(dim=1).tolist()
    prompts = [tuple(row[len(row) - n:].tolist()) for row, n in zip(prompt_ids.cpu(), lengths, strict=True)]
    streams = [Stream(p, method, u, permutation, general_mask, frame)
               for p, u in zip(prompts, uniform.cpu(), strict=True)]
    order = 1 if method in ONE_ROW_METHODS else permutation.group.order
    tokens, stats = decode(as_backbone(model), streams, top_k=top_k, stop_mask=stop_mask, pad_id=pad_id,
                           batch_rows=batch_rows or order * len(streams), device=prompt_ids.device,
                           keep_log_probs=return_log_probs, average=average)
    steps = uniform.shape[1]
    out = torch.full((len(streams), steps), pad_id, dtype=torch.long)
    for i, row in enumerate(tokens):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    log_probs = None
    if return_log_probs:
        log_probs = torch.zeros(len(streams), steps, stats.log_probs[0].shape[-1], dtype=stats.log_probs[0].dtype)
        for i, kept in enumerate(stats.log_probs):
            log_probs[i, :kept.shape[0]] = kept
    return Generation(out.to(prompt_ids.device), torch.tensor([len(r) for r in tokens], device=prompt_ids.device),
                      log_probs)
