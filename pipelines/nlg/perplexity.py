"""Stage `nlg_perplexity`: quality (perplexity on prose where the group acts) and the fairness identity on the real
model.

Writes the metrics file: per axis and method the perplexity over every scored token and over the axis's
equality-word tokens (each axis is its own group), a description of the text (source, checksum, license, windows),
and per backbone, method and axis the fairness equivariance error ``max |log p(g.y | g.x) - log p(y | x)|`` over
next tokens y and the axis's prompts x. The group methods' perplexities under the other group-average rule
(``nlg.group_average``) sit beside them, and per axis the count of equality tokens of the scored text that are pieces
of a longer word (equitune.nlg.wordpieces).
"""

from __future__ import annotations

import os

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting make torch ~10x slower (measured: a
# 2-thread SmolLM2 prefill took 24 s spinning, 3 s passive). Passive waiting changes speed only, not results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402

from equitune.nlg.config import NlgParams  # noqa: E402
from equitune.nlg.experiment import load_perplexity_inputs, measure_perplexity  # noqa: E402
from equitune.nlg.perplexity import heldout_documents  # noqa: E402
from equitune.nlg.records import read_prompts  # noqa: E402
from equitune.pipeline.context import open_stage  # noqa: E402
from equitune.pipeline.io import write_json  # noqa: E402
from equitune.pipeline.stage import add_paths, argument_parser, run_stage  # noqa: E402


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), prompts="the prompts stage's file",
                     metrics="write the perplexities here").parse_args(argv)
    with open_stage(args, "nlg", NlgParams) as stage:
        nlg, device = stage.params, stage.device
        prompts = read_prompts(args.prompts, nlg.model, nlg.axes)
        # The text, its checksum and the windows come before the model load: a missing or wrong corpus costs nothing.
        documents, description = heldout_documents(nlg.perplexity)
        stage.seed(0)
        inputs = load_perplexity_inputs(nlg, prompts, documents, device)
        with stage.run({"stage": "perplexity"}) as run:
            metrics = measure_perplexity(nlg, inputs, description, prompts, device)
            run.log_final(metrics)
    write_json(args.metrics, metrics)  # last: a run that fails to close leaves no metrics file
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    run_stage(main)
