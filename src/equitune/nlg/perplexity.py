"""Perplexity of base / EquiLM / R-EquiLM on English prose where the group acts (the quality check).

Text sources:
- ``austen`` (default, offline): Jane Austen's six novels (:mod:`equitune.nlg.corpus`; checksum-verified).
- ``pydoc_topics`` (offline): the documentation text Python ships in ``pydoc_data/topics.py``, sorted by key and
  joined by blank lines; fixed for a given Python minor version. Few demographic words occur in it.
- ``wikitext`` (paper profile, online): the WikiText-103 (raw) test split, the parquet file of the hub dataset
  ``Salesforce/wikitext`` (fetched into the Hugging Face cache, so a filled cache works offline); its lines (each
  with its newline) joined back into the original text.

Every document is cut into non-overlapping windows of ``window`` tokens (the context restarts at each window; a
short tail is dropped); every token of a window but the first is scored. With ``windows_per_axis: K`` the text
scored is, for each axis, the first K windows (in corpus order) that contain one of the axis's equality tokens
(all forms, e.g. " man", "Man", " woman", ...), all axes' windows together: text on which every group acts. With
``windows_per_axis: null`` it is the first ``max_tokens`` tokens of the text (the paper's contiguous setting).

For each axis and method the report gives the perplexity over every scored token and over the tokens of the axis's
equality sets (the positions whose next token is an equality word, where the group changes the distribution most).
EquiLM's distribution at a position averages the backbone's distributions of the |G| transformed windows mapped
back: one forward of the untransformed window serves the base model and every axis, and a transformed copy is run
only where it differs from the window (a window without the axis's words is its own image; its mapped-back copy
still permutes the equality words' probabilities). CanonLM's canonical copy of a window is one of those copies. The
group methods are scored under ``nlg.group_average`` and, beside it, under the other averaging rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..core.checks import equivariance_error
from ..core.errors import ConfigError, DataError
from .backbone import CausalLM
from .canon import CanonicalFrame, CanonLM
from .config import NlgParams, PerplexityParams
from .control import axis_control
from .corpus import AUSTEN_LICENSE, AUSTEN_SHA256, austen_novels
from .equilm import AVERAGES, FairLM
from .sampling import left_pad
from .wordpieces import WordPieceCount
from .words import AxisWords

__all__ = ["AxisGroup", "ScoredText", "evaluate_perplexity", "heldout_documents", "heldout_text", "perplexity",
           "score_windows", "select_windows", "token_windows", "wikitext_test_text", "window_word_pieces"]


def heldout_text(source: str) -> str:
    if source == "pydoc_topics":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if source == "wikitext":
        return wikitext_test_text()
    raise ConfigError(f"unknown perplexity source {source!r}; allowed: austen, pydoc_topics, wikitext")


def heldout_documents(settings: PerplexityParams) -> tuple[list[tuple[str, str]], dict]:
    """``([(title, text), ...], description)`` of the configured source (the description goes to the metrics)."""
    if settings.source == "austen":
        return austen_novels(settings.austen_path), {"source": "austen", "sha256": AUSTEN_SHA256,
                                                     "license": AUSTEN_LICENSE, "package": "r-cran-janeaustenr 1.0.0-1"}
    return [(settings.source, heldout_text(settings.source))], {"source": settings.source}


WIKITEXT_REPO = "Salesforce/wikitext"
WIKITEXT_TEST_FILE = "wikitext-103-raw-v1/test-00000-of-00001.parquet"


def wikitext_test_text() -> str:
    import pyarrow.parquet as pq
    from huggingface_hub import hf_hub_download

    from .lm import hub_error_message

    try:
        path = hf_hub_download(WIKITEXT_REPO, WIKITEXT_TEST_FILE, repo_type="dataset")
    except Exception as error:  # noqa: BLE001 (offline: huggingface_hub's connection/cache errors, OSError)
        raise DataError(hub_error_message(f"WikiText-103 ({WIKITEXT_TEST_FILE})", WIKITEXT_REPO, "dataset", error)
                        + "; or use nlg.perplexity.source: austen (offline)") from None
    lines = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return "".join(lines)


def token_windows(tokenizer, text: str, max_tokens: int, window: int) -> torch.Tensor:
    """The first ``max_tokens`` tokens as ``[n_windows, window]``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < max_tokens:
        raise ConfigError(f"the held-out text has {len(ids)} tokens, fewer than nlg.perplexity.max_tokens={max_tokens}")
    if max_tokens % window:
        raise ConfigError(f"nlg.perplexity.max_tokens ({max_tokens}) must be a multiple of window ({window})")
    return torch.tensor(ids[:max_tokens]).reshape(-1, window)


@dataclass
class ScoredText:
    """The windows scored ``[W, window]`` (corpus order), where each came from, and each axis's own windows."""

    windows: torch.Tensor
    origin: list[tuple[str, int]]  # (document title, window index in it)
    axis_windows: dict[str, list[int]]  # axis -> rows of `windows` selected for it (all rows when not selecting)

    @property
    def scored_tokens(self) -> int:
        return self.windows.shape[0] * (self.windows.shape[1] - 1)


def select_windows(tokenizer, documents: Sequence[tuple[str, str]], settings: PerplexityParams,
                   equality_ids: Mapping[str, set[int]]) -> ScoredText:
    """The text to score (see the module docstring); documents are tokenised only as far as needed."""
    if settings.windows_per_axis is None:
        text = "\n\n".join(text for _, text in documents)
        windows = token_windows(tokenizer, text, settings.max_tokens, settings.window)
        every = list(range(windows.shape[0]))
        return ScoredText(windows, [(documents[0][0], i) for i in every], {axis: every for axis in equality_ids})
    wanted = settings.windows_per_axis
    chosen: dict[tuple[str, int], torch.Tensor] = {}
    per_axis: dict[str, list[tuple[str, int]]] = {axis: [] for axis in equality_ids}
    members = {axis: torch.tensor(sorted(ids)) for axis, ids in equality_ids.items()}
    for title, text in documents:
        if all(len(found) >= wanted for found in per_axis.values()):
            break
        ids = tokenizer.encode(text, add_special_tokens=False)
        count = len(ids) // settings.window
        windows = torch.tensor(ids[:count * settings.window]).reshape(count, settings.window)
        for axis, found in per_axis.items():
            hits = torch.isin(windows, members[axis]).any(dim=1).nonzero().squeeze(1).tolist()
            for index in hits[:max(0, wanted - len(found))]:
                found.append((title, index))
                chosen[(title, index)] = windows[index]
    short = {axis: len(found) for axis, found in per_axis.items() if len(found) < wanted}
    if short:
        raise ConfigError(f"nlg.perplexity.windows_per_axis={wanted}: the text has only {short} windows of "
                          f"{settings.window} tokens with the axis's equality words; lower windows_per_axis or window")
    titles = [title for title, _ in documents]
    origin = sorted(chosen, key=lambda key: (titles.index(key[0]), key[1]))
    row = {key: i for i, key in enumerate(origin)}
    return ScoredText(torch.stack([chosen[key] for key in origin]), origin,
                      {axis: sorted(row[key] for key in found) for axis, found in per_axis.items()})


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count) if count else math.nan


@dataclass
class AxisGroup:
    """One axis's group as the perplexity needs it."""

    permutation: object
    general_mask: torch.Tensor
    equality: torch.Tensor  # [V] bool: the axis's equality tokens
    frame: CanonicalFrame | None = None  # CanonLM's (needed when the methods include canonlm)


def _add(totals: dict, key: tuple, nll: torch.Tensor, where: torch.Tensor) -> None:
    entry = totals.setdefault(key, [0.0, 0])
    entry[0] += float(nll[where].sum())
    entry[1] += int(where.sum())


def _target_log_probs(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(log_probs)`` at the targets ``[B, T-1]`` (positions 0..T-2 predict tokens 1..T-1)."""
    return F.log_softmax(log_probs[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _other_rule(average: str) -> str:
    return next(rule for rule in AVERAGES if rule != average)


@torch.no_grad()
def score_windows(backbone, scored: ScoredText, groups: Mapping[str, AxisGroup], methods: Sequence[str], batch_size: int,
           device, progress: Callable[[str], None], average: str = "log_probs", other_average: bool = False) -> dict:
    """``{(axis, method, "all" | "equality"): [summed NLL, tokens]}`` over the scored text; with ``other_average``
    also ``{(axis, method, where, rule): ...}`` for the group methods under the other averaging rule.

    The same numbers as :func:`~equitune.nlg.equilm.combine_group_log_probs` (and :class:`~.canon.CanonLM`) on the
    |G| mapped-back copies, with fewer vocabulary-sized temporaries (a 256-token window's log-probs are 50 MB): the
    log-prob average is summed as the copies are made, the identity copy serves the base model and every axis, and
    CanonLM's canonical copy of a window is one of the copies EquiLM runs anyway. Everything else is read at the
    targets only (each mapped-back copy is already normalised, so a mixture of copies is too)."""
    totals: dict = {}
    windows = scored.windows
    rules = [average, _other_rule(average)] if other_average else [average]
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)
        identity = backbone(batch)  # [B, T, V]: the base model, and every axis's identity copy
        targets = batch[:, 1:]
        everywhere = torch.ones_like(targets, dtype=torch.bool)
        base = identity[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # already normalised
        for axis, group in groups.items():
            permutation, order = group.permutation, group.permutation.group.order
            equality = group.equality.to(device)[targets]
            general_ids = group.general_mask.nonzero().squeeze(1).to(device)
            copies = _CopiesAtTargets(base, identity, targets, general_ids)
            canon = _Canonical(group, batch, base) if "canonlm" in methods else None
            averaged = identity.clone()  # row 0 of the group average: the identity copy, mapped back by e
            for g in range(1, order):
                moved = permutation.on_ids.apply(batch, g)
                changed = (moved != batch).any(dim=1)
                back = permutation.permutations[g].to(device)  # g^-1 . y = y[..., pi_g]; gather: index_select
                mapped = identity.gather(-1, back.expand_as(identity))  # along V is several times slower on CPU
                if bool(changed.any()):  # a window without the axis's words is its own image: no forward
                    copy = backbone(moved[changed])
                    mapped[changed] = copy.gather(-1, back.expand_as(copy))
                averaged += mapped
                copies.add(mapped)
                if canon is not None:
                    canon.take(g, copies.at_targets[-1])
                del mapped
            averaged /= order
            for rule in rules:
                fair = relaxed = None
                for method in methods:
                    if method == "base":
                        if rule != average:
                            continue  # no group average: one number
                        log_probs = base
                    elif method == "equilm" or method == "canonlm" or not bool(group.general_mask.any()):
                        # (R-EquiLM without general words is EquiLM; CanonLM is EquiLM before the first equality word)
                        if fair is None:
                            fair = (_target_log_probs(averaged, targets) if rule == "log_probs"
                                    else copies.mixture())
                        log_probs = canon.log_probs(fair) if method == "canonlm" else fair
                    else:
                        if relaxed is None:
                            if rule == "log_probs":
                                general = group.general_mask.to(device)
                                relaxed = _target_log_probs(torch.where(general, identity, averaged), targets)
                            else:
                                relaxed = copies.relaxed_mixture(group.general_mask.to(device)[targets])
                        log_probs = relaxed
                    key = (axis, method) if rule == average else (axis, method, rule)
                    _add(totals, (*key[:2], "all", *key[2:]), -log_probs, everywhere)
                    _add(totals, (*key[:2], "equality", *key[2:]), -log_probs, equality)
            del averaged
        progress(f"perplexity: {min(start + batch_size, windows.shape[0])}/{windows.shape[0]} windows")
    return totals


class _CopiesAtTargets:
    """The mapped-back copies read at the targets ``[B, T-1]`` (and at the general words ``[B, T-1, n]``), for the
    probability-average rule: the mixture of normalised copies is normalised, so no vocabulary-wide pass is needed."""

    def __init__(self, base: torch.Tensor, identity: torch.Tensor, targets: torch.Tensor, general_ids: torch.Tensor):
        self.targets, self.general_ids = targets, general_ids
        self.at_targets = [base]
        self.at_general = [identity[:, :-1, general_ids]]

    def add(self, mapped: torch.Tensor) -> None:
        self.at_targets.append(mapped[:, :-1].gather(-1, self.targets.unsqueeze(-1)).squeeze(-1))
        self.at_general.append(mapped[:, :-1, self.general_ids])

    def mixture(self) -> torch.Tensor:
        return torch.logsumexp(torch.stack(self.at_targets), dim=0) - math.log(len(self.at_targets))

    def relaxed_mixture(self, target_is_general: torch.Tensor) -> torch.Tensor:
        """R-EquiLM under the probability average: the identity copy on the general words, the mixture elsewhere,
        renormalised: ``log Z = log(1 + sum_general (p_identity - p_mixture))``."""
        general_mixture = torch.logsumexp(torch.stack(self.at_general), dim=0) - math.log(len(self.at_general))
        log_z = torch.log1p((self.at_general[0].exp() - general_mixture.exp()).sum(dim=-1))
        return torch.where(target_is_general, self.at_targets[0], self.mixture()) - log_z


class _Canonical:
    """CanonLM's log-probs at the targets of a batch of windows, read from the copies EquiLM computes: position t of
    window b reads the mapped-back copy of its frame's element (``g*`` of the window's first equality token at or
    before t), or the group average before that token (:class:`~equitune.nlg.canon.CanonLM`)."""

    def __init__(self, group: AxisGroup, batch: torch.Tensor, base: torch.Tensor):
        if group.frame is None:
            raise ValueError("canonlm needs the axis's canonical frame (AxisGroup.frame)")
        positions = group.frame.position_elements(batch)
        self.free = positions[:, :-1] < 0  # position t predicts token t+1 from the prefix 0..t
        self.element = positions[:, -1]  # the window's frame once its first equality token is read
        self.values = base.clone()  # the identity copy at the targets (element 0, and windows without the words)

    def take(self, g: int, at_targets: torch.Tensor) -> None:
        rows = self.element == g
        if bool(rows.any()):
            self.values[rows] = at_targets[rows]

    def log_probs(self, averaged_at_targets: torch.Tensor) -> torch.Tensor:
        return torch.where(self.free, averaged_at_targets, self.values)


def window_word_pieces(scored: ScoredText, equality: Mapping[str, torch.Tensor], word_chars: tuple) -> dict:
    """Per axis, the equality tokens in the scored windows and how many are inside a longer word
    (:mod:`equitune.nlg.wordpieces`; each window is its own sequence, as the model sees it)."""
    result = {}
    for axis, mask in equality.items():
        count = WordPieceCount()
        for window in scored.windows.tolist():
            count.add(window, mask, *word_chars)
        result[axis] = count.as_metrics()
    return result


def evaluate_perplexity(lm, scored: ScoredText, description: dict, prompts: dict, nlg: NlgParams,
                        device: torch.device | str, progress: Callable[[str], None] = print,
                        word_chars: tuple | None = None) -> dict:
    """The perplexity table (per axis and method, over all scored tokens and over the axis's equality tokens) and
    the fairness identity on the real model: per backbone (the LM, and the control when enabled), method and axis,
    ``max |log p(g.y | g.x) - log p(y | x)|`` over next tokens y and the axis's prompts x (0 up to float
    round-off for EquiLM; not 0 for a base model, nor for R-EquiLM on axes with general words, by design)."""
    settings = nlg.perplexity
    base = CausalLM(lm)
    vocab_size = base.vocab_size
    words = {axis: AxisWords.from_json(axis, data["words"]) for axis, data in prompts["axes"].items()}
    groups = {}
    for axis, axis_words in words.items():
        equality = axis_words.equality_mask(vocab_size)
        permutation = axis_words.permutation(vocab_size)
        groups[axis] = AxisGroup(permutation, axis_words.general_mask(vocab_size), equality,
                                 CanonicalFrame.of_cycles(permutation, axis_words.equality_cycles))
        # Perplexity over the equality tokens needs at least one; say so before any scoring (not a NaN at the end).
        if not bool(equality[scored.windows[:, 1:]].any()):
            raise DataError(f"nlg.perplexity: the {scored.windows.shape[0]} scored windows of {description['source']!r} "
                            f"hold no next token from axis {axis!r}'s equality words, so their perplexity is "
                            "undefined: score more text (nlg.perplexity.max_tokens) or select windows that contain "
                            "them (nlg.perplexity.windows_per_axis)")
    totals = score_windows(base, scored, groups, ["base", *[m for m in nlg.methods if m != "base"]], settings.batch_size,
                    device, progress, nlg.group_average, other_average=True)
    table: dict = {}
    for (axis, method, where, *rule), (nll, count) in totals.items():
        if method in nlg.methods:
            entry = table.setdefault(axis, {}).setdefault(method, {})
            if rule:  # the other averaging rule, beside the params' one
                entry = entry.setdefault("other_average", {"rule": rule[0]})
            entry[where] = {"perplexity": perplexity(nll, count), "tokens": count, "nll": nll}
    metrics: dict = {
        "group_average": nlg.group_average,
        "text": {**description, "window": settings.window, "windows": scored.windows.shape[0],
                 "scored_tokens": scored.scored_tokens, "windows_per_axis": settings.windows_per_axis,
                 "documents": sorted({title for title, _ in scored.origin}, key=[t for t, _ in scored.origin].index)},
        "perplexity": table,
        "fairness_equivariance_error": _fairness_errors(base, words, groups, prompts, nlg, device),
    }
    if word_chars is not None:  # the tokens' texts (from the tokenizer): see equitune.nlg.wordpieces
        metrics["word_pieces"] = window_word_pieces(scored, {a: g.equality for a, g in groups.items()}, word_chars)
    return metrics


def _fairness_errors(base, words, groups, prompts, nlg, device) -> dict:
    errors: dict = {}
    for axis, axis_data in prompts["axes"].items():
        # Demographic 0's prompts suffice: the group moves them onto the other demographics' prompts.
        first = [p["token_ids"] for p in axis_data["prompts"] if p["demographic_index"] == 0]
        ids, mask = left_pad(first, prompts["pad_id"])
        ids, mask = ids.to(device), mask.to(device)
        group = groups[axis]
        backbones = {"lm": base}
        if nlg.control.enabled:
            backbones["control"] = axis_control(base, words[axis], prompts["control"], nlg.control)
        for model, backbone in backbones.items():
            for method in nlg.methods:
                if method == "canonlm":
                    fair = CanonLM(backbone, group.frame, nlg.group_average)
                else:
                    fair = FairLM(backbone, method, group.permutation, group.general_mask, nlg.group_average)
                errors.setdefault(model, {}).setdefault(method, {})[axis] = equivariance_error(
                    fair, (group.permutation.on_ids, None), (ids, mask), group.permutation.on_scores)
    return errors
