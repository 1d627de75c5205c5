"""Stage `scan_report`: the SCAN section of the report (a table like the paper's, mean ± std over seeds) and the
curve figures, aggregated from the grid in params."""

from __future__ import annotations

from pathlib import Path

from equitune.pipeline.io import write_text
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.pipeline.tracking import tracked_run
from equitune.scan.config import ScanParams
from equitune.scan.report import build_section, collect, plot_curves


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--metrics-dir", type=Path, required=True, help="folder of the cells' metrics files")
    parser.add_argument("--out", type=Path, required=True, help="the section's markdown file")
    parser.add_argument("--figures", type=Path, required=True, help="folder of its figures")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "scan", ScanParams)
    params = loaded.section
    results = collect(params, args.metrics_dir)  # a missing cell stops here, before the run
    with tracked_run("scan", profile=loaded.profile, params=params) as run:
        figures = plot_curves(params, results, args.figures)
        relative = [path.relative_to(args.out.parent) if path.is_relative_to(args.out.parent) else path
                    for path in figures]
        write_text(args.out, build_section(params, results, relative))
        run.log_artifacts(args.out, args.figures)


if __name__ == "__main__":
    run_stage(main)
