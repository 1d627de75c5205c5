"""Stage `scan_tune@<split>-<cell>-<seed>`: from the pretrained checkpoint, evaluate the pretrained model, the
zero-shot equituned and equizero models, then equitune and equizero-tune (the |G| copies as one batch through
the core wrappers) and evaluate them; test accuracy at the curve steps; one metrics file for the cell."""

from __future__ import annotations

import copy
import time

import torch

from equitune.io import write_json
from equitune.params import load_params
from equitune.scan.config import bind_scan_group
from equitune.scan.experiment import (
    accuracy,
    build_model,
    checkpoint_path,
    decoding_equivariance_fraction,
    load_split_files,
    metrics_path,
    teacher_forced_equivariance_error,
)
from equitune.scan.training import MaskedConfidenceProxy, tune
from equitune.seeding import seed_everything
from equitune.stage import StageError, argument_parser, check_in_grid, resolve_device, run_stage
from equitune.tracking import tracked_run
from equitune.wrappers import EquiTune, EquiZero


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
    perms = bind_scan_group(params.groups[args.split])
    input_perm, output_perm = perms
    source = checkpoint_path(args.split, args.cell, args.seed)
    if not source.exists():
        raise StageError(f"{source} not found; run scan_pretrain@{args.split}-{args.cell}-{args.seed} first")
    data = load_split_files(args.split)
    seed_everything(args.seed, params.threads, all_params.base.deterministic)
    pretrained = build_model(params, args.cell)
    pretrained.load_state_dict(torch.load(source, map_location="cpu", weights_only=True)["state_dict"])
    pretrained.to(device).eval()
    settings = params.tune
    lr = settings.lr[args.split]

    def both(model, method) -> dict[str, float]:
        return {"test_accuracy": accuracy(model, data["test"], params, method, perms),
                "validation_accuracy": accuracy(model, data["validation"], params, method, perms)}

    tags = {"model": f"seq2seq-{args.cell}", "method": "equitune+equizero", "group": input_perm.group.name,
            "seed": args.seed, "split": args.split}
    with tracked_run("scan", profile=all_params.profile, params=params, tags=tags) as run:
        started = time.perf_counter()
        # Test accuracy at step 0 and at the last step are curve points, so each is decoded once.
        metrics: dict = {
            "pretrained": both(pretrained, "greedy"),
            "pretrained_equivariance_error": teacher_forced_equivariance_error(pretrained, data["validation"], perms,
                                                                               equituned=False),
        }
        actions = (input_perm.on_ids, output_perm.on_ids)
        curves: dict[str, dict[str, float]] = {}
        for method in ("equitune", "equizero"):
            generator = seed_everything(args.seed, params.threads, all_params.base.deterministic)
            model = copy.deepcopy(pretrained)
            proxy = MaskedConfidenceProxy() if method == "equizero" else None
            if method == "equitune":
                wrapper = EquiTune(model, actions, output_action=output_perm.on_scores)
            else:
                wrapper = EquiZero(model, actions, output_action=output_perm.on_scores, proxy=proxy)
            curve: dict[str, float] = {}
            validation: dict[int, float] = {}

            def on_checkpoint(step: int, method=method, model=model, curve=curve, validation=validation) -> None:
                value = accuracy(model, data["test"], params, method, perms)
                curve[f"step_{step}_test_accuracy"] = value
                run.log_metrics({f"{method}_test_accuracy": value}, step=step)
                if step in (0, settings.steps):
                    validation[step] = accuracy(model, data["validation"], params, method, perms)

            tune(wrapper, data["train"], steps=settings.steps, batch_size=settings.batch_size, lr=lr,
                 weight_decay=settings.weight_decay, grad_clip=settings.grad_clip, generator=generator,
                 checkpoints=settings.curve_steps, on_checkpoint=on_checkpoint, proxy=proxy, device=device,
                 desc=method, bucket_batches=settings.bucket_batches)
            model.eval()
            for key, step in ((f"{method}_0_steps", 0), (method, settings.steps)):
                metrics[key] = {"test_accuracy": curve[f"step_{step}_test_accuracy"],
                                "validation_accuracy": validation[step]}
            curves[method] = curve
            if method == "equitune":
                metrics["equitune_equivariance_error"] = teacher_forced_equivariance_error(
                    model, data["validation"], perms, equituned=True)
                metrics["equitune_decoding_equivariance_fraction"] = decoding_equivariance_fraction(
                    model, data["test"], params, perms)
        metrics["curve"] = curves
        run.log_metrics({"tune_seconds": time.perf_counter() - started})
        write_json(metrics_path(args.split, args.cell, args.seed), metrics)
        run.log_final(metrics)
        print(metrics)


if __name__ == "__main__":
    run_stage(main)
