"""Stage `perplexity_nlg`: quality (perplexity on held-out text) and the fairness identity on the real model.

Writes the metrics file: per method the perplexity on the held-out text (EquiLM and R-EquiLM per axis, since each
axis is its own group), and per method and axis the fairness equivariance error
``max |log p(g.y | g.x) - log p(y | x)|`` over next tokens y and the axis's prompts x.
"""

from __future__ import annotations

import os

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting make torch ~10x slower (measured: a
# 2-thread SmolLM2 prefill took 24 s spinning, 3 s passive). Passive waiting changes speed only, not results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

from equitune.nlg.config import NlgParams  # noqa: E402
from equitune.nlg.lm import load_lm, load_tokenizer  # noqa: E402
from equitune.nlg.perplexity import evaluate_perplexity, heldout_text, token_windows  # noqa: E402
from equitune.nlg.records import read_prompts  # noqa: E402
from equitune.pipeline.io import write_json  # noqa: E402
from equitune.pipeline.schema import load_section  # noqa: E402
from equitune.pipeline.seeding import seed_everything  # noqa: E402
from equitune.pipeline.stage import argument_parser, resolve_device, run_stage  # noqa: E402
from equitune.pipeline.tracking import tracked_run  # noqa: E402


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--prompts", type=Path, required=True, help="the prompts stage's file")
    parser.add_argument("--metrics", type=Path, required=True, help="write the perplexities here")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "nlg", NlgParams)
    nlg = loaded.section
    settings = nlg.perplexity
    device = resolve_device(loaded.base)
    prompts = read_prompts(args.prompts)
    text = heldout_text(settings.source)  # before the model load: an offline failure costs nothing
    seed_everything(0, loaded.base.threads, loaded.base.deterministic)
    tokenizer = load_tokenizer(nlg.model)
    windows = token_windows(tokenizer, text, settings.max_tokens, settings.window)
    lm = load_lm(nlg.model, device)
    with tracked_run("nlg", profile=loaded.profile, params=nlg, tags={"stage": "perplexity"}) as run:
        metrics = evaluate_perplexity(lm, windows, prompts, nlg, device, partial(print, flush=True))
        write_json(args.metrics, metrics)
        run.log_final(metrics)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    run_stage(main)
