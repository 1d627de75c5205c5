"""Stage `scan_prepare`: the SCAN splits in the grid as train/validation/test files, from the grammar (default)
or from the verified official files (scan.data.source: official)."""

from __future__ import annotations

from pathlib import Path

from equitune.pipeline.io import write_json, write_text
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.pipeline.tracking import tracked_run
from equitune.scan.config import ScanParams
from equitune.scan.experiment import prepare_splits


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of the split files (data/scan)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "scan", ScanParams)
    params = loaded.section
    files: dict[str, str] = {}  # made (or fetched and verified) in full before the run opens and anything is written
    summary = prepare_splits(params, files.__setitem__)
    with tracked_run("scan", profile=loaded.profile, params=params) as run:
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
