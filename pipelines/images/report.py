"""Stage `images_report`: reports/images.md and reports/figures/images/results/*.png from the grid's metrics."""

from __future__ import annotations

from equitune.images.report import build_images_report
from equitune.io import write_text
from equitune.params import load_params
from equitune.stage import argument_parser, run_stage


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    params = load_params(args.params).images
    write_text("reports/images.md", build_images_report(params))


if __name__ == "__main__":
    run_stage(main)
