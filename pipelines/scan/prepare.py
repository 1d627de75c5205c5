"""Stage `scan_prepare`: the SCAN splits in the grid as train/validation/test files, from the grammar (default)
or from the verified official files (scan.data.source: official)."""

from __future__ import annotations

from pathlib import Path

from equitune.pipeline.io import write_json, write_text
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.scan.config import ScanParams
from equitune.scan.experiment import prepare_splits


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of the split files (data/scan)")
    args = parser.parse_args(argv)
    params = load_section(args.params, "scan", ScanParams).section
    summary = prepare_splits(params, lambda name, text: write_text(args.out / name, text))
    write_json(args.out / "summary.json", summary)
    for split, counts in summary["splits"].items():
        print(f"{split}: {counts['train_lines']} train, {counts['validation_lines']} validation, "
              f"{counts['test_lines']} test lines")


if __name__ == "__main__":
    run_stage(main)
