"""Stage `report`: stitch reports/<experiment>.md sections under an environment header into reports/report.md."""

from __future__ import annotations

from pathlib import Path

from equitune.io import write_text
from equitune.params import load_params
from equitune.report import build_report
from equitune.stage import argument_parser, run_stage


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    write_text("reports/report.md", build_report(params, Path("reports")))


if __name__ == "__main__":
    run_stage(main)
