"""Stage `scan_report`: reports/scan.md (table like the paper's, mean ± std over seeds) and the curve figures."""

from __future__ import annotations

from pathlib import Path

from equitune.io import write_text
from equitune.params import load_params
from equitune.scan.report import build_section, collect, plot_curves
from equitune.stage import StageError, argument_parser, run_stage


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    params = load_params(args.params).scan
    try:
        results = collect(params)
    except FileNotFoundError as error:
        raise StageError(str(error)) from None
    figures = plot_curves(params, results, Path("reports/figures/scan"))
    write_text("reports/scan.md", build_section(params, results, figures))


if __name__ == "__main__":
    run_stage(main)
