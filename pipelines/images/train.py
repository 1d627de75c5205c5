"""Stage `train_images_*@<cell>`: fine-tune one backbone with one method -> outputs/images/train/<cell>/
(model.pt: best-validation weights; curves.json: per-epoch train loss and validation accuracy, also in MLflow)."""

from __future__ import annotations

import torch
from images_cli import cell_from, cell_parser

from equitune.images.backbones import build_classifier
from equitune.images.methods import build_method, method_group, new_parameters
from equitune.images.prepared import load_prepared
from equitune.images.training import train
from equitune.io import atomic_path, write_json
from equitune.params import load_params
from equitune.seeding import seed_everything
from equitune.stage import resolve_device, run_stage
from equitune.tracking import tracked_run


def autocast_dtype(params, device: torch.device):
    if params.train.mixed_precision and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def main(argv=None) -> None:
    args = cell_parser(__doc__).parse_args(argv)
    all_params = load_params(args.params)
    params, cell = all_params.images, cell_from(args)
    cell.check(params)  # bad names exit 2 here, before any work
    method_group(cell.method, cell.group)
    device = resolve_device(all_params.base)
    data, classes = load_prepared(cell.dataset)

    generator = seed_everything(cell.seed, all_params.base.threads, all_params.base.deterministic)
    classifier = build_classifier(cell.backbone, len(classes), params.resolution, params.train.pretrained)
    model = build_method(cell.method, cell.group, classifier, params.train.lambda_hidden, params.train.equizero_proxy).to(device)
    tags = {"model": cell.backbone, "method": cell.method, "group": cell.group, "seed": cell.seed, "dataset": cell.dataset,
            "stage_kind": "train"}
    with tracked_run("images", profile=all_params.profile, params=params, tags=tags, run_name=f"train-{cell.name}") as run:
        result = train(
            model, data, resolution=params.resolution, epochs=params.train.epochs, batch_size=params.train.batch_size,
            lr=params.train.lr, new_parameters=new_parameters(model, classifier), new_lr=params.train.head_lr,
            momentum=params.train.momentum, weight_decay=params.train.weight_decay,
            generator=generator, device=device, augment_rotations=cell.method == "finetune_augment",
            eval_batch_size=params.evaluation.batch_size, autocast_dtype=autocast_dtype(params, device),
            freeze_batchnorm=params.train.freeze_batchnorm,
            on_epoch=lambda r: run.log_metrics({"train_loss": r.train_loss, "val_accuracy": r.val_accuracy}, step=r.epoch),
            progress=True,
        )
        curves = {
            "best_epoch": result.best_epoch,
            "epochs": [{"epoch": r.epoch, "train_loss": r.train_loss, "val_accuracy": r.val_accuracy} for r in result.history],
        }
        with atomic_path(cell.train_dir / "model.pt") as tmp:
            torch.save(result.best_state, tmp)
        write_json(cell.train_dir / "curves.json", curves)
        run.log_metrics({"best_epoch": result.best_epoch})
    print(f"{cell.name}: best epoch {result.best_epoch}, val accuracy {result.history[result.best_epoch - 1].val_accuracy:.4f}")


if __name__ == "__main__":
    run_stage(main)
