"""Stage `images_report`: the images section of the report and its figures, aggregated from the grid in params."""

from __future__ import annotations

from pathlib import Path

from equitune.images.config import ImagesParams
from equitune.images.report import build_images_report
from equitune.pipeline.io import write_text
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.pipeline.tracking import tracked_run


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--metrics-dir", type=Path, required=True, help="folder of the cells' metrics files")
    parser.add_argument("--features-dir", type=Path, required=True, help="folder of the features stage's figures")
    parser.add_argument("--figures", type=Path, required=True, help="folder of this section's figures")
    parser.add_argument("--out", type=Path, required=True, help="the section's markdown file")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "images", ImagesParams)
    params = loaded.section
    with tracked_run("images", profile=loaded.profile, params=params) as run:
        write_text(args.out, build_images_report(params, args.metrics_dir, args.figures, args.features_dir, args.out))
        run.log_artifacts(args.out, args.figures)


if __name__ == "__main__":
    run_stage(main)
