"""Stage `nlg_prompts`: check the word lists against the tokenizer and write the tokenised prompts.

Writes, per axis, the equality/general/neutral token ids (with every word form that was not usable listed), and
every prompt with its token ids. Bad word lists and prompts that are not exact group images of each other stop the
stage with exit code 2 before anything is written.
"""

from __future__ import annotations

from equitune.nlg.config import NlgParams
from equitune.nlg.experiment import make_prompts
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_json
from equitune.pipeline.stage import add_paths, argument_parser, run_stage


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), out="write the tokenised prompts here").parse_args(argv)
    with open_stage(args, "nlg", NlgParams) as stage:
        nlg = stage.params
        prompts = make_prompts(nlg)  # bad word lists stop here, before the run
        with stage.run({"model": nlg.model}) as run:
            write_json(args.out, prompts)
            run.log_artifact(args.out)
    count = sum(len(axis["prompts"]) for axis in prompts["axes"].values())
    print(f"wrote {count} prompts for {len(prompts['axes'])} axes to {args.out}")


if __name__ == "__main__":
    run_stage(main)
