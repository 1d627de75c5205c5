"""Stage `scan_pretrain@<split>-<cell>-<seed>`: train the non-equivariant seq2seq model, keep the best-validation
checkpoint (exact-match accuracy on the validation hold-out)."""

from __future__ import annotations

import time

import torch

from equitune.io import atomic_path, write_json
from equitune.params import load_params
from equitune.scan.experiment import accuracy, build_model, checkpoint_path, load_split_files
from equitune.scan.training import pretrain
from equitune.seeding import seed_everything
from equitune.stage import argument_parser, check_in_grid, resolve_device, run_stage
from equitune.tracking import tracked_run


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--split", required=True)
    parser.add_argument("--cell", required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    all_params = load_params(args.params)
    params = all_params.scan
    check_in_grid("split", args.split, params.grid.splits)
    check_in_grid("cell", args.cell, params.grid.cells)
    check_in_grid("seed", args.seed, params.grid.seeds)
    device = resolve_device(all_params.base)
    data = load_split_files(args.split)
    generator = seed_everything(args.seed, params.threads, all_params.base.deterministic)
    model = build_model(params, args.cell).to(device)
    settings = params.pretrain
    tags = {"model": f"seq2seq-{args.cell}", "method": "pretrain", "group": "trivial", "seed": args.seed,
            "split": args.split}
    with tracked_run("scan", profile=all_params.profile, params=params, tags=tags) as run:
        history = []

        def on_validation(seen: int, loss: float, val_accuracy: float) -> None:
            history.append({"examples": seen, "train_loss": loss, "validation_accuracy": val_accuracy})
            run.log_metrics({"train_loss": loss, "validation_accuracy": val_accuracy}, step=seen)

        started = time.perf_counter()
        best_state, best_accuracy, best_at = pretrain(
            model, data["train"], lambda m: accuracy(m, data["validation"], params, "greedy"),
            examples=settings.examples, batch_size=settings.batch_size, lr=settings.lr,
            teacher_forcing=settings.teacher_forcing, grad_clip=settings.grad_clip,
            validate_every_examples=settings.validate_every_examples, bucket_batches=settings.bucket_batches,
            lr_schedule=settings.lr_schedule,
            generator=generator, on_validation=on_validation, device=device)
        seconds = time.perf_counter() - started
        run.log_metrics({"pretrain_seconds": seconds, "seconds_per_1000_examples": 1000 * seconds / settings.examples})
        target = checkpoint_path(args.split, args.cell, args.seed)
        summary = {"best_validation_accuracy": best_accuracy, "best_at_examples": best_at, "history": history}
        write_json(target.parent / "pretrain.json", summary)
        with atomic_path(target) as tmp:
            torch.save({"cell": args.cell, "state_dict": best_state}, tmp)
        run.log_final({"best_validation_accuracy": best_accuracy, "best_at_examples": best_at})


if __name__ == "__main__":
    run_stage(main)
