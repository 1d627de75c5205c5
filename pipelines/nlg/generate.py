"""Stage `generate_nlg`: sample continuations of every prompt with base, EquiLM and R-EquiLM (one model load).

Writes data/nlg/samples.jsonl (one JSON record per sample) and metrics/nlg/generation.json (per method and
axis: the fraction of paired samples that are exact group images of each other, and the mean sample length).
Decoding speed (tokens per second) goes to MLflow only: it is not deterministic.
"""

from __future__ import annotations

import os

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting make torch ~10x slower (measured: a
# 2-thread SmolLM2 prefill took 24 s spinning, 3 s passive). Passive waiting changes speed only, not results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import statistics
import sys
import time

from tqdm import tqdm

from equitune.io import atomic_path, read_json, write_json
from equitune.nlg.equilm import lm_vocab_size, stop_token_mask
from equitune.nlg.lm import load_lm, load_tokenizer
from equitune.nlg.sampling import group_image_fraction, sample_axis
from equitune.nlg.words import AxisWords
from equitune.params import load_params
from equitune.seeding import seed_everything
from equitune.stage import StageError, argument_parser, resolve_device, run_stage
from equitune.tracking import tracked_run

PROMPTS = "data/nlg/prompts.json"
SAMPLES = "data/nlg/samples.jsonl"
METRICS = "metrics/nlg/generation.json"


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--prompts", default=PROMPTS)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    nlg = params.nlg
    device = resolve_device(params.base)
    try:
        prompts = read_json(args.prompts)
    except FileNotFoundError:
        raise StageError(f"{args.prompts} not found: run `dvc repro prompts_nlg` first") from None
    if prompts["model"] != nlg.model or set(prompts["axes"]) != set(nlg.axes):
        raise StageError(f"{args.prompts} was made for another model or axes: rerun `dvc repro prompts_nlg`")
    seed_everything(0, params.base.threads, params.base.deterministic)
    tokenizer = load_tokenizer(nlg.model)
    lm = load_lm(nlg.model, device)
    vocab_size = lm_vocab_size(lm)
    stop_mask = stop_token_mask(tokenizer, vocab_size)
    pad_id = prompts["pad_id"]
    rows_per_method = sum(len(a["prompts"]) for a in prompts["axes"].values()) * len(nlg.seeds) * nlg.samples_per_prompt
    metrics: dict = {}
    records = []
    with tracked_run("nlg", profile=params.profile, params=nlg,
                     tags={"model": nlg.model, "method": ",".join(nlg.methods), "group": ",".join(nlg.axes)}) as run:
        bar = tqdm(total=rows_per_method * len(nlg.methods), desc="samples", disable=not sys.stderr.isatty())
        for axis, axis_data in prompts["axes"].items():
            words = AxisWords.from_json(axis, axis_data["words"])
            for method in nlg.methods:
                start = time.perf_counter()
                axis_records = sample_axis(
                    lm, tokenizer, axis_data, words, [method], seeds=nlg.seeds,
                    samples_per_prompt=nlg.samples_per_prompt, top_k=nlg.top_k, max_new_tokens=nlg.max_new_tokens,
                    batch_size=nlg.batch_size, stop_mask=stop_mask, pad_id=pad_id, vocab_size=vocab_size,
                    device=device, progress=bar.update)
                seconds = time.perf_counter() - start
                tokens = sum(len(r["tokens"]) for r in axis_records)
                run.log_metrics({f"{method}/{axis}/tokens_per_second": tokens / seconds,
                                 f"{method}/{axis}/seconds": seconds})
                metrics.setdefault(method, {})[axis] = {
                    "group_image_fraction": group_image_fraction(axis_records, words, vocab_size),
                    "mean_new_tokens": statistics.fmean(len(r["tokens"]) for r in axis_records),
                }
                records += axis_records
        bar.close()
        with atomic_path(SAMPLES) as tmp:
            with open(tmp, "w") as handle:
                for record in records:
                    handle.write(json.dumps(record, sort_keys=True) + "\n")
        write_json(METRICS, metrics)
        run.log_final(metrics)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    run_stage(main)
