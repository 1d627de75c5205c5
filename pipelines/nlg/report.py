"""Stage `nlg_report`: reports/nlg.md and reports/figures/nlg/labels.png from the nlg metrics files."""

from __future__ import annotations

import json
from pathlib import Path

from equitune.io import read_json, write_text
from equitune.nlg.report import example_samples, label_figure, nlg_markdown
from equitune.nlg.scoring import LABELS
from equitune.params import load_params
from equitune.stage import StageError, argument_parser, run_stage

FIGURE = Path("reports/figures/nlg/labels.png")


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    nlg = load_params(args.params).nlg
    try:
        scores = read_json("metrics/nlg/scores.json")
        generation = read_json("metrics/nlg/generation.json")
        perplexities = read_json("metrics/nlg/perplexity.json")
        prompts = read_json("data/nlg/prompts.json")
        with open("data/nlg/samples.jsonl") as handle:
            records = [json.loads(line) for line in handle]
    except FileNotFoundError as error:
        raise StageError(f"{error.filename} not found: run the nlg stages first (dvc repro nlg_report)") from None
    labels = LABELS[scores["scorer"]]
    label_figure(nlg, scores, labels, FIGURE)
    write_text("reports/nlg.md", nlg_markdown(nlg, scores, generation, perplexities, prompts, labels,
                                              "figures/nlg/labels.png", example_samples(nlg, records)))


if __name__ == "__main__":
    run_stage(main)
