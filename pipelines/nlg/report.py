"""Stage `nlg_report`: the nlg section of the report and its label figure, from the nlg stages' files."""

from __future__ import annotations

import os
from pathlib import Path

from equitune.nlg.config import NlgParams
from equitune.nlg.report import build_section, collect, label_figure
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_text
from equitune.pipeline.stage import add_paths, argument_parser, run_stage


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), prompts="the prompts stage's file", samples="the generated samples",
                     generation="nlg_generate's metrics", scores="nlg_score's metrics",
                     perplexity="nlg_perplexity's metrics", out="the section's markdown file",
                     figure="the label figure (PNG)").parse_args(argv)
    with open_stage(args, "nlg", NlgParams) as stage:
        nlg = stage.params
        # a missing file stops here, before the run
        results = collect(args.prompts, args.samples, args.generation, args.scores, args.perplexity)
        with stage.run({"model": nlg.model}) as run:
            label_figure(nlg, results.scores, results.labels, args.figure)
            figure_link = Path(os.path.relpath(args.figure, args.out.parent)).as_posix()
            write_text(args.out, build_section(nlg, results, figure_link))
            run.log_artifacts(args.out, args.figure)


if __name__ == "__main__":
    run_stage(main)
