"""Stage `scan_prepare`: the SCAN splits in the grid as train/validation/test files, from the grammar (default)
or from the verified official files (scan.data.source: official)."""

from __future__ import annotations

from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_json, write_text
from equitune.pipeline.stage import add_paths, argument_parser, run_stage
from equitune.scan.config import ScanParams
from equitune.scan.splits import prepare_splits


def main(argv=None) -> None:
    args = add_paths(argument_parser(__doc__), out="folder of the split files (data/scan)").parse_args(argv)
    with open_stage(args, "scan", ScanParams) as stage:
        files: dict[str, str] = {}  # made (or fetched and verified) in full before the run opens and anything is written
        summary = prepare_splits(stage.params, files.__setitem__)
        with stage.run() as run:
            for name, text in files.items():
                write_text(args.out / name, text)
            write_json(args.out / "summary.json", summary)
            run.log_artifact(args.out / "summary.json")
            run.reference_output(args.out, "data")
    for split, counts in summary["splits"].items():
        print(f"{split}: {counts['train_lines']} train, {counts['validation_lines']} validation, "
              f"{counts['test_lines']} test lines")


if __name__ == "__main__":
    run_stage(main)
