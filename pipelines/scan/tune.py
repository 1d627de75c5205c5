"""Stages `scan_tune_<split>@<group>-<rnn>-<seed>`: from the pretrained checkpoint of (split, rnn, seed),
evaluate the zero-shot equituned and equizero models with the group, then equitune and equizero-tune (the |G|
copies as one batch through the core wrappers) and evaluate them; test accuracy at the curve steps; then tune
through the frame (only each command's frame copies; validation accuracy at the curve steps, test accuracy at the
end); one metrics file for the cell."""

from __future__ import annotations

from equitune.pipeline.context import open_stage
from equitune.pipeline.io import write_json
from equitune.pipeline.stage import add_options, add_paths, argument_parser, run_stage
from equitune.scan.cells import TuneCell
from equitune.scan.config import ScanParams
from equitune.scan.experiment import load_pretrained, tune_cell
from equitune.scan.splits import load_split_files

CURVE = ("equitune_test_accuracy", "equizero_test_accuracy", "frame_test_accuracy", "equitune_validation_accuracy",
         "equizero_validation_accuracy", "frame_validation_accuracy")


def main(argv=None) -> None:
    parser = add_options(argument_parser(__doc__), split=str, group=str, rnn=str, seed=int)
    add_paths(parser, data="the split's folder (data/scan/<split>)", model="the cell's pretrained model folder",
              metrics="the cell's metrics file",
              curve="test and validation accuracy against tuning steps (DVC plots)")
    args = parser.parse_args(argv)
    cell = TuneCell(args.split, args.group, args.rnn, args.seed)
    with open_stage(args, "scan", ScanParams, cell=cell) as stage:
        params, device = stage.params, stage.device
        data = load_split_files(args.data, params.evaluation.max_commands)
        stage.seed(cell.seed)
        pretrained = load_pretrained(params, cell.pretrained, args.model, device)
        tags = {"model": f"seq2seq-{cell.rnn}", "method": "equitune+equizero+frame", "group": cell.group,
                "seed": cell.seed, "split": cell.split}
        with stage.run(tags, curve=stage.curve(args.curve, "step", CURVE), run_name=cell.name) as run:
            run.reference_output(args.model, "pretrained")
            metrics = tune_cell(params, cell, data, pretrained, lambda: stage.seed(cell.seed), device,
                                lambda values, step: run.log_metrics(values, step=step))
            run.log_final(metrics, series=("curve",))  # the curve is logged step by step above
    write_json(args.metrics, metrics)  # last: a run that fails to close leaves no metrics file
    print(metrics)


if __name__ == "__main__":
    run_stage(main)
