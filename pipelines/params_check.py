"""Stage `params_check`: the whole params file against the schema, before any other stage runs.

Every other stage depends on its output, so `dvc repro` (any target) and `dvc exp run` check every section first and
stop at a bad edit before DVC deletes any stage's outputs. The output's text is constant: a valid edit leaves it
unchanged, and only the stages whose keys changed rerun. (`dvc repro -s STAGE` skips this stage; a stage that then
refuses its params puts its recorded outputs back, see equitune.pipeline.stage.run_stage.)
"""

from __future__ import annotations

from equitune.params import load_params
from equitune.pipeline.io import write_text
from equitune.pipeline.stage import add_paths, argument_parser, run_stage

CHECKED = ("# Written by the params_check stage of dvc.yaml: the params file passed the schema (python -m "
           "equitune.params check).\n# Every stage depends on this file, so a bad edit stops `dvc repro` before any "
           "stage deletes its outputs.\n")


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), out="the record that the check passed (constant text)").parse_args(argv)
    params = load_params(args.params)
    write_text(args.out, CHECKED)
    print(f"{args.params}: valid ({params.profile} profile)")


if __name__ == "__main__":
    run_stage(main)
