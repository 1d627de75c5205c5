"""Stage `nlg_report`: the nlg section of the report and its label figure, from the nlg stages' files."""

from __future__ import annotations

import os
from pathlib import Path

from equitune.core.errors import DataError
from equitune.nlg.config import NlgParams
from equitune.nlg.records import read_prompts, read_records
from equitune.nlg.report import example_samples, label_figure, nlg_markdown
from equitune.nlg.scoring import LABELS
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import read_json, write_text
from equitune.pipeline.stage import add_paths, argument_parser, run_stage


def _metrics(path: Path, stage: str) -> dict:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run `dvc repro {stage}` first") from None


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), prompts="the prompts stage's file", samples="the generated samples",
                     generation="generate_nlg's metrics", scores="score_nlg's metrics",
                     perplexity="perplexity_nlg's metrics", out="the section's markdown file",
                     figure="the label figure (PNG)").parse_args(argv)
    with open_stage(args, "nlg", NlgParams) as stage:
        nlg = stage.params
        scores = _metrics(args.scores, "score_nlg")
        generation = _metrics(args.generation, "generate_nlg")
        perplexities = _metrics(args.perplexity, "perplexity_nlg")
        prompts = read_prompts(args.prompts)
        records = read_records(args.samples, "generate_nlg")
        labels = LABELS[scores["scorer"]]
        with stage.run({"model": nlg.model}) as run:
            label_figure(nlg, scores, labels, args.figure)
            figure_link = Path(os.path.relpath(args.figure, args.out.parent)).as_posix()
            write_text(args.out, nlg_markdown(nlg, scores, generation, perplexities, prompts, labels, figure_link,
                                              example_samples(nlg, records)))
            run.log_artifacts(args.out, args.figure)


if __name__ == "__main__":
    run_stage(main)
