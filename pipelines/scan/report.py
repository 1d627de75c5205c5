"""Stage `scan_report`: the SCAN section of the report (a table like the paper's, mean ± std over seeds) and the
curve figures, aggregated from the grid in params."""

from __future__ import annotations

from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_text
from equitune.pipeline.stage import add_paths, argument_parser, run_stage
from equitune.scan.config import ScanParams
from equitune.scan.report import build_section, collect, plot_curves


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), metrics_dir="folder of the cells' metrics files",
                     plots_dir="folder of the cells' curve files (DVC plots)", out="the section's markdown file",
                     figures="folder of its figures").parse_args(argv)
    with open_stage(args, "scan", ScanParams) as stage:
        params = stage.params
        results = collect(params, args.metrics_dir, args.plots_dir)  # a missing cell stops here, before the run
        with stage.run() as run:
            figures = plot_curves(params, results, args.figures)
            relative = [path.relative_to(args.out.parent) if path.is_relative_to(args.out.parent) else path
                        for path in figures]
            write_text(args.out, build_section(params, results, relative))
            run.log_artifacts(args.out, args.figures)


if __name__ == "__main__":
    run_stage(main)
