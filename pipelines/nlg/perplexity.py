"""Stage `perplexity_nlg`: quality (perplexity on held-out text) and the fairness identity on the real model.

Writes metrics/nlg/perplexity.json: per method the perplexity on the held-out text (EquiLM and R-EquiLM per
axis, since each axis is its own group), and per method and axis the fairness equivariance error
``max |log p(g.y | g.x) - log p(y | x)|`` over next tokens y and the axis's prompts x (0 up to float round-off
for EquiLM; not 0 for the base model, nor for R-EquiLM on axes with general words, by design).
"""

from __future__ import annotations

import os

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting make torch ~10x slower (measured: a
# 2-thread SmolLM2 prefill took 24 s spinning, 3 s passive). Passive waiting changes speed only, not results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402

from equitune.checks import equivariance_error
from equitune.io import read_json, write_json
from equitune.nlg.equilm import FairLM, lm_vocab_size
from equitune.nlg.lm import load_lm, load_tokenizer
from equitune.nlg.perplexity import heldout_text, perplexity, token_windows, window_nll
from equitune.nlg.sampling import left_pad
from equitune.nlg.words import AxisWords
from equitune.params import load_params
from equitune.seeding import seed_everything
from equitune.stage import StageError, argument_parser, resolve_device, run_stage
from equitune.tracking import tracked_run

PROMPTS = "data/nlg/prompts.json"
METRICS = "metrics/nlg/perplexity.json"


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    nlg = params.nlg
    settings = nlg.perplexity
    device = resolve_device(params.base)
    try:
        prompts = read_json(PROMPTS)
    except FileNotFoundError:
        raise StageError(f"{PROMPTS} not found: run `dvc repro prompts_nlg` first") from None
    text = heldout_text(settings.source)  # before the model load: an offline failure costs nothing
    seed_everything(0, params.base.threads, params.base.deterministic)
    tokenizer = load_tokenizer(nlg.model)
    windows = token_windows(tokenizer, text, settings.max_tokens, settings.window)
    lm = load_lm(nlg.model, device)
    vocab_size = lm_vocab_size(lm)
    scored = windows.shape[0] * (windows.shape[1] - 1)
    metrics: dict = {"source": settings.source, "scored_tokens": scored}
    with tracked_run("nlg", profile=params.profile, params=nlg, tags={"stage": "perplexity"}) as run:
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
                target = metrics.setdefault(method, {}) if method != "base" else metrics.setdefault("base", {})
                target.setdefault(axis, {})["fairness_equivariance_error"] = error
            print(f"[{axis}] done", flush=True)
        write_json(METRICS, metrics)
        run.log_final(metrics)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    run_stage(main)
