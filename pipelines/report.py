"""Stage `report`: stitch the experiments' sections, in the order given, under an environment header; write the
environment record (CPU, kernels, library versions) that the reproduce check compares before comparing digits."""

from __future__ import annotations

from pathlib import Path

from equitune.pipeline.io import write_json, write_text
from equitune.pipeline.report import build_report
from equitune.pipeline.reproducibility import environment_record
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.pipeline.tracking import tracked_run


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--sections", type=Path, nargs="+", required=True, help="the experiments' sections, in order")
    parser.add_argument("--out", type=Path, required=True, help="the report's markdown file")
    parser.add_argument("--environment", type=Path, required=True, help="the environment record (JSON)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, None, None)
    record = environment_record(loaded.base.threads, loaded.base.deterministic)
    with tracked_run("report", profile=loaded.profile, params=loaded.base, tags={"profile": loaded.profile}) as run:
        write_text(args.out, build_report(loaded.profile, loaded.base, args.sections, record))
        run.log_artifact(args.out)
    write_json(args.environment, record)  # the metrics file, last: a run that fails to close leaves none


if __name__ == "__main__":
    run_stage(main)
