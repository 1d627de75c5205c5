"""Perplexity of base / EquiLM / R-EquiLM on held-out English text (the quality check).

Text sources:
- ``pydoc_topics`` (default, offline): the documentation text Python ships in ``pydoc_data/topics.py`` (the
  ``topics`` dict behind ``help('if')``): the entries in sorted key order joined by blank lines; the first
  ``max_tokens`` tokens of that text are scored. It is fixed for a given Python minor version.
- ``wikitext`` (paper profile, online): the WikiText-103 (raw) test split, the parquet file of the hub dataset
  ``Salesforce/wikitext`` (fetched into the Hugging Face cache, so a filled cache works offline); its lines (each
  with its newline) joined back into the original text, the first ``max_tokens`` tokens.

The tokens are cut into non-overlapping windows of ``window`` tokens (the context restarts at each window); every
token of a window but the first is scored. For EquiLM the next-token distribution at every position is the
group average over the transformed windows, so one batched forward of the |G| copies gives base (row 0, the
untransformed copy), EquiLM and R-EquiLM at once.
"""

from __future__ import annotations

import math

import torch

from ..core.checks import equivariance_error
from ..core.errors import ConfigError, DataError
from .config import NlgParams
from .equilm import FairLM, combine_group_log_probs, lm_vocab_size
from .sampling import left_pad
from .words import AxisWords

__all__ = ["evaluate_perplexity", "heldout_text", "perplexity", "token_windows", "wikitext_test_text", "window_nll"]


def heldout_text(source: str) -> str:
    if source == "pydoc_topics":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if source == "wikitext":
        return wikitext_test_text()
    raise ConfigError(f"unknown perplexity source {source!r}; allowed: pydoc_topics, wikitext")


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
                        + "; or use nlg.perplexity.source: pydoc_topics (offline)") from None
    lines = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return "".join(lines)


def token_windows(tokenizer, text: str, max_tokens: int, window: int) -> torch.Tensor:
    """The first ``max_tokens`` tokens as ``[n_windows, window]`` (a short last window is dropped, and said so)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < max_tokens:
        raise ConfigError(f"the held-out text has {len(ids)} tokens, fewer than nlg.perplexity.max_tokens={max_tokens}")
    if max_tokens % window:
        raise ConfigError(f"nlg.perplexity.max_tokens ({max_tokens}) must be a multiple of window ({window})")
    return torch.tensor(ids[:max_tokens]).reshape(-1, window)


@torch.no_grad()
def window_nll(fair_lm, windows: torch.Tensor, methods: list[str]) -> dict[str, float]:
    """Summed negative log-likelihood of tokens 1.. of each window, per method (from one grouped forward)."""
    rows = fair_lm.group_rows(windows)  # [|G|, B, T, V]
    targets = windows[:, 1:].unsqueeze(-1)
    totals = {}
    for method in methods:
        log_probs = combine_group_log_probs(rows, method, fair_lm.general_mask)[:, :-1]
        totals[method] = float(-log_probs.gather(-1, targets).sum())
    return totals


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count)


def evaluate_perplexity(lm, windows: torch.Tensor, prompts: dict, nlg: NlgParams, device: torch.device | str,
                        progress=print) -> dict:
    """Per method the perplexity on the held-out windows (EquiLM and R-EquiLM per axis, since each axis is its own
    group), and per method and axis the fairness equivariance error ``max |log p(g.y | g.x) - log p(y | x)|`` over
    next tokens y and the axis's prompts x (0 up to float round-off for EquiLM; not 0 for the base model, nor for
    R-EquiLM on axes with general words, by design)."""
    settings = nlg.perplexity
    vocab_size = lm_vocab_size(lm)
    scored = windows.shape[0] * (windows.shape[1] - 1)
    metrics: dict = {"source": settings.source, "scored_tokens": scored}
    for axis, axis_data in prompts["axes"].items():
        words = AxisWords.from_json(axis, axis_data["words"])
        permutation = words.permutation(vocab_size)
        general = words.general_mask(vocab_size)
        grouped = [m for m in nlg.methods if m != "base"]
        methods = (["base"] if "base" in nlg.methods and "base" not in metrics else []) + grouped
        fair = FairLM(lm, "equilm", permutation, general)
        totals = dict.fromkeys(methods, 0.0)
        for start in range(0, windows.shape[0], settings.batch_size):
            batch = windows[start:start + settings.batch_size].to(device)
            for method, nll in window_nll(fair, batch, methods).items():
                totals[method] += nll
        for method, total in totals.items():
            if method == "base":
                metrics["base"] = {"perplexity": perplexity(total, scored)}
            else:
                metrics.setdefault(method, {}).setdefault(axis, {})["perplexity"] = perplexity(total, scored)
        ids, mask = left_pad([p["token_ids"] for p in axis_data["prompts"]], prompts["pad_id"])
        ids, mask = ids.to(device), mask.to(device)
        for method in nlg.methods:
            model = FairLM(lm, method, permutation, general)
            error = equivariance_error(model, (permutation.on_ids, None), (ids, mask), permutation.on_scores)
            metrics.setdefault(method, {}).setdefault(axis, {})["fairness_equivariance_error"] = error
        progress(f"[{axis}] done")
    return metrics
