"""Stage `evaluate_images_*@<cell>`: test accuracy upright / per rotation / randomly rotated, per-class accuracy and the
invariance error of one trained model -> metrics/images/<cell>.json (the same dict to MLflow)."""

from __future__ import annotations

import torch
from images_cli import cell_from, cell_parser
from train import autocast_dtype

from equitune.images.backbones import build_classifier
from equitune.images.evaluation import evaluate_rotations
from equitune.images.methods import build_method, method_group
from equitune.images.prepared import load_prepared
from equitune.io import read_json, write_json
from equitune.params import load_params
from equitune.seeding import seed_everything
from equitune.stage import StageError, resolve_device, run_stage
from equitune.tracking import tracked_run


def main(argv=None) -> None:
    args = cell_parser(__doc__).parse_args(argv)
    all_params = load_params(args.params)
    params, cell = all_params.images, cell_from(args)
    cell.check(params)
    group = method_group(cell.method, cell.group)
    checkpoint = cell.train_dir / "model.pt"
    if not checkpoint.exists():
        raise StageError(f"{checkpoint} not found; run the training stage of {cell.name} first")
    device = resolve_device(all_params.base)
    data, classes = load_prepared(cell.dataset)
    seed_everything(cell.seed, all_params.base.threads, all_params.base.deterministic)
    classifier = build_classifier(cell.backbone, len(classes), params.resolution, pretrained=False)
    model = build_method(cell.method, cell.group, classifier, params.train.lambda_hidden, params.train.equizero_proxy)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.to(device).eval()

    # The rotation group the test set uses (c4) and, when different, the model's own group.
    invariance_groups = ("c4",) + ((group,) if group not in ("c4", "trivial") else ())
    metrics = evaluate_rotations(
        model, data["test_x"], data["test_y"], classes, resolution=params.resolution,
        batch_size=params.evaluation.batch_size, rotation_seed=params.evaluation.rotation_seed,
        invariance_batch=params.evaluation.invariance_batch, groups=invariance_groups, device=device,
        autocast_dtype=autocast_dtype(params, device),
    )
    curves = read_json(cell.train_dir / "curves.json")
    metrics["training"] = {
        "best_epoch": curves["best_epoch"],
        "curve": {f"epoch{r['epoch']}": {"train_loss": r["train_loss"], "val_accuracy": r["val_accuracy"]} for r in curves["epochs"]},
    }
    tags = {"model": cell.backbone, "method": cell.method, "group": cell.group, "seed": cell.seed, "dataset": cell.dataset,
            "stage_kind": "evaluate"}
    with tracked_run("images", profile=all_params.profile, params=params, tags=tags, run_name=f"evaluate-{cell.name}") as run:
        run.log_final(metrics)
        write_json(cell.metrics_path, metrics)
    print(f"{cell.name}: upright {metrics['test_accuracy_upright']:.4f}, random rotation "
          f"{metrics['test_accuracy_random_rotation']:.4f}, invariance error {metrics['invariance_error']}")


if __name__ == "__main__":
    run_stage(main)
