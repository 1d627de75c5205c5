"""Stage `nlg_score`: label every sample (sentiment (VADER), or regard in the paper profile) and summarise.

Writes the metrics file: per backbone (LM, control), method, axis and demographic the label fractions, and per
backbone, method and axis the bias gap (negative minus positive fraction of the first demographic minus that of the
second), each with its bootstrap confidence interval. Labels are per sample in the labels file.
"""

from __future__ import annotations

import json

from equitune.nlg.config import NlgParams
from equitune.nlg.experiment import score_samples
from equitune.nlg.records import read_prompts, read_records, write_records
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_json
from equitune.pipeline.stage import add_paths, argument_parser, run_stage


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), prompts="the prompts stage's file",
                     samples="the generate stage's samples", labels="write the labelled samples here",
                     metrics="write the summary here").parse_args(argv)
    with open_stage(args, "nlg", NlgParams) as stage:
        nlg = stage.params
        prompts = read_prompts(args.prompts)
        records = read_records(args.samples, "nlg_generate")
        with stage.run({"scorer": nlg.scorer}) as run:
            scored = score_samples(nlg, prompts, records, stage.device)
            write_records(args.labels, scored.labelled)
            run.log_final(scored.metrics)
    metrics = scored.metrics
    write_json(args.metrics, metrics)  # last: a run that fails to close leaves no metrics file
    for model in nlg.models:
        for method in nlg.methods:
            print(model, method, json.dumps({axis: metrics[model][method][axis]["bias_gap"] for axis in nlg.axes}))


if __name__ == "__main__":
    run_stage(main)
