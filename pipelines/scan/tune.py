"""Stages `scan_tune_<split>@<group>-<cell>-<seed>`: from the pretrained checkpoint of (split, cell, seed),
evaluate the zero-shot equituned and equizero models with the group, then equitune and equizero-tune (the |G|
copies as one batch through the core wrappers) and evaluate them; test accuracy at the curve steps; one metrics
file for the cell."""

from __future__ import annotations

from pathlib import Path

from equitune.pipeline.curves import Curve
from equitune.pipeline.io import write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, resolve_device, run_stage
from equitune.pipeline.tracking import tracked_run
from equitune.scan.cells import TuneCell
from equitune.scan.config import ScanParams
from equitune.scan.experiment import load_pretrained, load_split_files, tune_cell


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--split", required=True)
    parser.add_argument("--group", required=True, help="a group name from scan.groups")
    parser.add_argument("--cell", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the split's folder (data/scan/<split>)")
    parser.add_argument("--model", type=Path, required=True, help="the cell's pretrained model folder")
    parser.add_argument("--metrics", type=Path, required=True, help="the cell's metrics file")
    parser.add_argument("--curve", type=Path, required=True,
                        help="test and validation accuracy against tuning steps (DVC plots)")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, "scan", ScanParams)
    params, cell = loaded.section, TuneCell(args.split, args.group, args.cell, args.seed)
    cell.check(params)
    device = resolve_device(loaded.base)
    data = load_split_files(args.data)
    seed_everything(cell.seed, params.threads, loaded.base.deterministic)
    pretrained = load_pretrained(params, cell.pretrained, args.model, device)
    tags = {"model": f"seq2seq-{cell.cell}", "method": "equitune+equizero", "group": cell.group, "seed": cell.seed,
            "split": cell.split}
    curve = Curve(args.curve, x="step", y=("equitune_test_accuracy", "equizero_test_accuracy",
                                           "equitune_validation_accuracy", "equizero_validation_accuracy"))
    with tracked_run("scan", profile=loaded.profile, params=params, tags=tags, curve=curve,
                     run_name=cell.name) as run:
        run.reference_output(args.model, "pretrained")
        metrics = tune_cell(params, cell, data, pretrained,
                            lambda: seed_everything(cell.seed, params.threads, loaded.base.deterministic), device,
                            lambda values, step: run.log_metrics(values, step=step))
        run.log_final(metrics, series=("curve",))  # the curve is logged step by step above
    write_json(args.metrics, metrics)  # last: a run that fails to close leaves no metrics file
    print(metrics)


if __name__ == "__main__":
    run_stage(main)
