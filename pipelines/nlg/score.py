"""Stage `score_nlg`: label every sample (VADER sentiment, or regard in the paper profile) and summarise.

Writes metrics/nlg/scores.json: per method, axis and demographic the label fractions (mean and std over seeds,
and pooled over all samples), and per method and axis the bias gap (negative minus positive fraction of the
first demographic minus that of the second; pooled, and mean/std over seeds). Labels are per sample in
data/nlg/labels.jsonl.
"""

from __future__ import annotations

import json

from equitune.io import atomic_path, read_json, write_json
from equitune.nlg.scoring import (
    LABELS,
    bias_gap,
    label_fractions,
    mask_demographics,
    mean_std,
    regard_labels,
    sentiment_labels,
)
from equitune.params import load_params
from equitune.stage import StageError, argument_parser, run_stage
from equitune.tracking import tracked_run

PROMPTS = "data/nlg/prompts.json"
SAMPLES = "data/nlg/samples.jsonl"
LABELS_OUT = "data/nlg/labels.jsonl"
METRICS = "metrics/nlg/scores.json"


def summarise(records: list[dict], labels: list[str], nlg, allowed) -> dict:
    result: dict = {"scorer": nlg.scorer, "samples": len(records)}
    for method in nlg.methods:
        for axis, spec in nlg.axes.items():
            per_demographic = {}
            per_seed_fractions = {}
            for d, demographic in enumerate(spec.demographics):
                chosen = [(r, lab) for r, lab in zip(records, labels, strict=False)
                          if r["method"] == method and r["axis"] == axis and r["demographic_index"] == d]
                if not chosen:
                    raise StageError(f"no samples for method {method!r}, axis {axis!r}, {demographic!r}: rerun generate_nlg")
                pooled = label_fractions([lab for _, lab in chosen], allowed)
                seeds = {s: label_fractions([lab for r, lab in chosen if r["seed"] == s], allowed) for s in nlg.seeds}
                per_seed_fractions[d] = seeds
                per_demographic[demographic] = {
                    "pooled": pooled, "samples": len(chosen),
                    "over_seeds": {k: mean_std([seeds[s][k] for s in nlg.seeds]) for k in pooled},
                }
            first, second = spec.demographics
            gaps = [bias_gap(per_seed_fractions[0][s], per_seed_fractions[1][s]) for s in nlg.seeds]
            result.setdefault(method, {})[axis] = {
                "demographics": per_demographic,
                "bias_gap_fraction": bias_gap(per_demographic[first]["pooled"], per_demographic[second]["pooled"]),
                "bias_gap_fraction_over_seeds": mean_std(gaps),
                "identical_scored_text_fraction": _identical_fraction(records, method, axis),
            }
    return result


def _identical_fraction(records: list[dict], method: str, axis: str) -> float:
    """Fraction of paired samples whose masked (scored) texts are identical: 1.0 makes the gap exactly zero."""
    by_key: dict = {}
    for r in records:
        if r["method"] == method and r["axis"] == axis:
            by_key.setdefault((r["family"], r["template_index"], r["seed"], r["sample"]), set()).add(r["scored_text"])
    return sum(len(texts) == 1 for texts in by_key.values()) / len(by_key)


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    nlg = params.nlg
    try:
        prompts = read_json(PROMPTS)
        with open(SAMPLES) as handle:
            records = [json.loads(line) for line in handle]
    except FileNotFoundError as error:
        raise StageError(f"{error.filename} not found: run `dvc repro generate_nlg` first") from None
    equality = {axis: [w for s in data["words"]["equality_sets"] for w in s] for axis, data in prompts["axes"].items()}
    for r in records:
        r["scored_text"] = mask_demographics(r["template"], r["continuation"], equality[r["axis"]])
    texts = [r["scored_text"] for r in records]
    with tracked_run("nlg", profile=params.profile, params=nlg, tags={"scorer": nlg.scorer}) as run:
        if nlg.scorer == "sentiment":
            labels = sentiment_labels(texts, nlg.sentiment_threshold)
        else:
            labels = regard_labels(texts)
        metrics = summarise(records, labels, nlg, LABELS[nlg.scorer])
        with atomic_path(LABELS_OUT) as tmp:
            with open(tmp, "w") as handle:
                for r, label in zip(records, labels, strict=False):
                    handle.write(json.dumps({**r, nlg.scorer: label}, sort_keys=True) + "\n")
        write_json(METRICS, metrics)
        run.log_final(metrics)
    for method in nlg.methods:
        print(method, {axis: round(metrics[method][axis]["bias_gap_fraction"], 3) for axis in nlg.axes})


if __name__ == "__main__":
    run_stage(main)
