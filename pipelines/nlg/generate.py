"""Stage `nlg_generate`: sample continuations of every prompt with the params' methods (base, EquiLM, R-EquiLM,
CanonLM), around the LM and around the positive control (one model load, one shared decoder).

Writes the samples (one JSON record per sample) and the generation metrics (per backbone, method and axis: the
fraction of paired samples that are exact group images of each other, the mean sample length and how many equality
tokens of the samples sit inside a longer word (equitune.nlg.wordpieces); per backbone the
decoding work asked for and computed). Decoding speed (tokens per second) goes to MLflow only: it is not
deterministic.
"""

from __future__ import annotations

import os

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting make torch ~10x slower (measured: a
# 2-thread SmolLM2 prefill took 24 s spinning, 3 s passive). Passive waiting changes speed only, not results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402

from equitune.nlg.config import NlgParams  # noqa: E402
from equitune.nlg.experiment import generate_samples, load_model  # noqa: E402
from equitune.nlg.records import read_prompts, write_records  # noqa: E402
from equitune.pipeline.context import open_stage  # noqa: E402
from equitune.pipeline.io import write_json  # noqa: E402
from equitune.pipeline.stage import add_paths, argument_parser, run_stage  # noqa: E402


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), prompts="the prompts stage's file",
                     samples="write the samples here (JSON lines)",
                     metrics="write the generation metrics here").parse_args(argv)
    with open_stage(args, "nlg", NlgParams, distributed_run=True) as stage:
        nlg, context = stage.params, stage.distribution
        prompts = read_prompts(args.prompts, nlg.model, nlg.axes)
        stage.seed(0)
        model = load_model(nlg, context.device)
        tags = {"model": nlg.model, "method": ",".join(nlg.methods), "group": ",".join(nlg.axes),
                "backbones": ",".join(nlg.models)}
        with stage.run(tags) as run:
            records, metrics = generate_samples(nlg, model, prompts, context.device, run.log_metrics, context,
                                                show_progress=stage.is_main)
            if not stage.is_main:
                return  # rank 0 alone writes outputs
            write_records(args.samples, records)
            run.log_final(metrics)
        write_json(args.metrics, metrics)  # last (rank 0 only): a run that fails to close leaves no metrics file
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    run_stage(main)
