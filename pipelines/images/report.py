"""Stage `images_report`: the images section of the report and its figures, aggregated from the grid in params."""

from __future__ import annotations

from equitune.images.config import ImagesParams
from equitune.images.report import build_section
from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_text
from equitune.pipeline.stage import add_paths, argument_parser, run_stage


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), metrics_dir="folder of the cells' metrics files",
                     plots_dir="folder of the cells' curve files (DVC plots)",
                     features_dir="folder of the features stage's figures",
                     figures="folder of this section's figures", out="the section's markdown file").parse_args(argv)
    with open_stage(args, "images", ImagesParams) as stage:
        with stage.run() as run:
            write_text(args.out, build_section(stage.params, args.metrics_dir, args.plots_dir, args.figures,
                                               args.features_dir, args.out))
            run.log_artifacts(args.out, args.figures)


if __name__ == "__main__":
    run_stage(main)
