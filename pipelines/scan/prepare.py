"""Stage `scan_prepare`: the SCAN splits in the grid, as train/validation/test files, from the grammar (default)
or from the verified official files (scan.data.source: official)."""

from __future__ import annotations

from equitune.io import write_json, write_text
from equitune.params import load_params
from equitune.scan.data import (
    OfficialDataError,
    download_official_split,
    format_lines,
    generate_split,
    hold_out_validation,
    pairs_checksum,
)
from equitune.scan.experiment import DATA_DIR
from equitune.stage import StageError, argument_parser, run_stage


def main(argv=None) -> None:
    args = argument_parser(__doc__).parse_args(argv)
    params = load_params(args.params).scan
    data = params.data
    # Every split is fetched (or generated) and verified before anything is written: a failed download of the
    # second split must not leave the first one's files behind.
    splits = {}
    for split in params.grid.splits:
        if data.source == "official":
            try:
                splits[split] = download_official_split(split, data.official_base_url, data.download_timeout_s)
            except OfficialDataError as error:
                raise StageError(str(error)) from None
        else:
            splits[split] = generate_split(split)
    summary = {"source": data.source, "splits": {}}
    for split, pairs in splits.items():
        train, validation = hold_out_validation(pairs.train, data.validation_fraction, data.validation_seed)
        folder = DATA_DIR / split
        for part, rows in (("train", train), ("validation", validation), ("test", pairs.test)):
            write_text(folder / f"{part}.txt", format_lines(rows))
        summary["splits"][split] = {
            "train_file_lines": len(pairs.train), "train_lines": len(train), "validation_lines": len(validation),
            "test_lines": len(pairs.test), "train_file_checksum": pairs_checksum(pairs.train),
            "test_checksum": pairs_checksum(pairs.test),
        }
        print(f"{split}: {len(train)} train, {len(validation)} validation, {len(pairs.test)} test lines")
    write_json(DATA_DIR / "summary.json", summary)


if __name__ == "__main__":
    run_stage(main)
