"""reports/images.md and its figures, aggregated from the cells of the params grid (never a glob of folders):
mean +- std over seeds of every accuracy, the measured invariance errors, learning curves, feature figures."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..pipeline.io import atomic_path, read_json
from .cells import Cell, grid_cells
from .config import ImagesParams
from .evaluation import ROTATIONS

__all__ = ["build_images_report", "summarise"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float], scale: float = 100.0) -> str:
    mean, std = _mean_std([v * scale for v in values])
    return f"{mean:.1f} ± {std:.1f}"


def summarise(params: ImagesParams, metrics_dir: Path) -> dict[tuple, list[tuple[Cell, dict]]]:
    """(dataset, backbone, method, group) -> [(cell, metrics)] over seeds; a missing metrics file is an error."""
    rows: dict[tuple, list[tuple[Cell, dict]]] = {}
    for cell in grid_cells(params):
        path = metrics_dir / f"{cell.name}.json"
        if not path.exists():
            raise DataError(f"{path} is missing: run the evaluate stage of {cell.name} first")
        rows.setdefault((cell.dataset, cell.backbone, cell.method, cell.group), []).append((cell, read_json(path)))
    return rows


def _label(key: tuple) -> str:
    _, _, method, group = key
    return method if group == "trivial" else f"{method} ({group})"


def _accuracy_figure(rows: dict, dataset: str, backbone: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows if k[0] == dataset and k[1] == backbone]
    conditions = [f"rot{a}" for a in ROTATIONS] + ["random"]
    width = 0.8 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, key in enumerate(keys):
        means, stds = [], []
        for condition in conditions:
            values = [m["test_accuracy_random_rotation"] if condition == "random" else m["test_accuracy_by_rotation"][f"accuracy_{condition}"]
                      for _, m in rows[key]]
            mean, std = _mean_std(values)
            means.append(100 * mean)
            stds.append(100 * std)
        ax.bar(np.arange(len(conditions)) + (i - (len(keys) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=_label(key))
    ax.set_xticks(np.arange(len(conditions)), ["0°", "90°", "180°", "270°", "random 90° multiple"])
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{backbone} on {dataset}: accuracy under test-time rotation (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def _curves_figure(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, cells in rows.items():
        curves = [m["training"]["curve"] for _, m in cells]
        epochs = sorted(int(e.removeprefix("epoch")) for e in curves[0])
        label = f"{key[0]}/{key[1]}: {_label(key)}" if len({k[:2] for k in rows}) > 1 else _label(key)
        for ax, name in ((loss_ax, "train_loss"), (acc_ax, "val_accuracy")):
            values = np.array([[c[f"epoch{e}"][name] for e in epochs] for c in curves])
            ax.errorbar(epochs, values.mean(axis=0), yerr=values.std(axis=0, ddof=1) if len(values) > 1 else None,
                        marker="o", capsize=2, label=label)
    loss_ax.set(xlabel="epoch", ylabel="training loss (mean over epoch)", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (upright)", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def build_images_report(params: ImagesParams, metrics_dir: Path, figures_dir: Path, features_dir: Path,
                        out: Path) -> str:
    """The section written to ``out``: tables, and figures written to ``figures_dir`` (the feature figures of the
    features stage are in ``features_dir``); links are relative to ``out``'s folder."""
    rows = summarise(params, metrics_dir)

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, out.parent)).as_posix()

    datasets_backbones = sorted({k[:2] for k in rows}, key=lambda db: (params.grid.datasets.index(db[0]), params.grid.backbones.index(db[1])))
    grid = params.grid
    train = params.train
    lines = [
        "## Image classification: finetune vs equitune under rotations (paper section 3.1)",
        "",
        f"ImageNet-pretrained backbones fine-tuned on upright images ({params.data.train_size or 'all'} training "
        f"images, {params.data.val_size} validation images carved from the training split for model selection, "
        f"{params.data.test_size or 'all'} test images from the test split; {params.resolution} px inputs), SGD "
        f"momentum {train.momentum}, lr {train.lr}, batch {train.batch_size}, {train.epochs} epoch(s), batch norm "
        f"{'frozen on ImageNet statistics' if train.freeze_batchnorm else 'trained'}; best epoch by upright validation "
        f"accuracy. Seeds {grid.seeds}; every cell is mean ± std over seeds (accuracies in %). "
        "`finetune_augment` trains on images rotated by random multiples of 90°. "
        "\"random\" = each test image rotated by its own seeded random multiple of 90° (the paper's metric). "
        "The invariance error is max |f(g·x) − f(x)| over the C4 rotations and a test batch, in float32 "
        "(`equitune.core.checks`); the max over seeds is shown.",
        "",
    ]
    for dataset, backbone in datasets_backbones:
        lines += [f"### {backbone} on {dataset}", "",
                  "| method | upright | 90° | 180° | 270° | random rotation | spread over rotations | C4 invariance error |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, cells in rows.items():
            if key[:2] != (dataset, backbone):
                continue
            metrics = [m for _, m in cells]
            by_rotation = [_fmt([m["test_accuracy_by_rotation"][f"accuracy_rot{a}"] for m in metrics]) for a in ROTATIONS]
            lines.append(
                f"| {_label(key)} | " + " | ".join(by_rotation)
                + f" | {_fmt([m['test_accuracy_random_rotation'] for m in metrics])}"
                + f" | {_fmt([m['test_accuracy_rotation_spread'] for m in metrics])}"
                + f" | {max(m['invariance_error']['c4'] for m in metrics):.2e} |"
            )
        figure = figures_dir / f"accuracy_by_rotation-{dataset}-{backbone}.png"
        _accuracy_figure(rows, dataset, backbone, figure)
        lines += ["", f"![accuracy by rotation]({link(figure)})", ""]
        # Per-class accuracy on the randomly rotated test set: where rotation hurts the baseline most.
        # This section's own classes (each dataset has its own), in first-seen order; a class absent from a test
        # subset is absent from that cell's metrics and shown as "-".
        section = {key: cells for key, cells in rows.items() if key[:2] == (dataset, backbone)}
        classes = list(dict.fromkeys(c for cells in section.values() for _, m in cells
                                     for c in m["per_class_accuracy_random_rotation"]))
        lines += ["Per-class accuracy on the randomly rotated test set (%, mean over seeds):", "",
                  "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for key, cells in section.items():
            values = [[m["per_class_accuracy_random_rotation"][c] for _, m in cells
                       if c in m["per_class_accuracy_random_rotation"]] for c in classes]
            lines.append(f"| {_label(key)} | " + " | ".join(f"{100 * statistics.fmean(v):.0f}" if v else "-"
                                                          for v in values) + " |")
        lines.append("")
    curves = figures_dir / "learning_curves.png"
    _curves_figure(rows, curves)
    lines += ["### Learning curves", "", f"![learning curves]({link(curves)})", ""]
    lines += ["### Feature maps under rotation", ""]
    for dataset in grid.datasets:
        path = metrics_dir / f"features-{dataset}.json"
        if not path.exists():
            raise DataError(f"{path} is missing: run `dvc repro features_images@{dataset}` first")
        features = read_json(path)
        lines += [
            f"{features['backbone']} feature maps (last convolutional layer, {params.figures.feature_resolution} px input, "
            f"the {len(features['channels'])} most active channels) for test image {features['image_index']} "
            f"({features['label']}) of {dataset}, rotated by 0/90/180/270°. Top rows: the pretrained backbone; bottom "
            "rows: the equituned one (C4-averaged maps after the inverse rotation). Measured equivariance error "
            f"max |F(g·x) − g·F(x)|: pretrained {features['pretrained_feature_equivariance_error']:.3g}, "
            f"equituned {features['equituned_feature_equivariance_error']:.2e}.",
            "",
            f"![feature maps]({link(features_dir / f'features-{dataset}.png')})",
            "",
            f"Animated: [features-{dataset}.gif]({link(features_dir / f'features-{dataset}.gif')})",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
