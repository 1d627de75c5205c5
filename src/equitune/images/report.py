"""The images section of the report and its figures, aggregated from the cells of the params grid (never a glob of
folders): mean +- std over seeds of every accuracy, the measured invariance errors, learning curves, feature figures."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..pipeline.io import atomic_path, read_json
from .cells import Cell, grid_cells
from .config import BACKBONE_UNITS, ImagesParams
from .evaluation import D4_ELEMENTS

__all__ = ["build_images_report", "summarise"]

ROTATION_NAMES = D4_ELEMENTS[:4]
ELEMENT_LABELS = {"identity": "upright", "rot90": "90°", "rot180": "180°", "rot270": "270°", "hflip": "mirror",
                  "rot90_after_hflip": "mirror+90°", "vflip": "mirror+180°", "rot270_after_hflip": "mirror+270°"}
"""Column labels of the D4 elements ("mirror" = left-right flip, applied first)."""


def expected_accuracy(metrics: dict, elements: tuple[str, ...]) -> float:
    """Accuracy when each test image is moved by a uniformly random element of ``elements``, in expectation: the
    mean of the per-element accuracies (exact; the "random" columns are one seeded draw of it)."""
    return statistics.fmean(metrics["test_accuracy_by_element"][name] for name in elements)


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
            raise DataError(f"{path} is missing: run the tune stage of {cell.name} first")
        rows.setdefault((cell.dataset, cell.backbone, cell.method, cell.group), []).append((cell, read_json(path)))
    return rows


def _label(key: tuple) -> str:
    _, _, method, group = key
    return method if group == "trivial" else f"{method} ({group})"


def _save(fig, plt, path: Path) -> None:
    with atomic_path(path) as tmp:
        # bbox "tight" grows the canvas to hold the legend placed outside the axes
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _bars_figure(rows: dict, keys: list[tuple], conditions: list[tuple[str, Callable[[dict], float]]], title: str,
                 path: Path) -> None:
    """Grouped bars: one group per test condition, one bar per method (mean over seeds, error bar = std); the
    legend sits below the axes, so it hides no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.84 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.25 * len(conditions) + 2), 4.2))
    colours = plt.get_cmap("tab10")
    for i, key in enumerate(keys):
        stats = [_mean_std([100 * value(m) for _, m in rows[key]]) for _, value in conditions]
        ax.bar(np.arange(len(conditions)) + (i - (len(keys) - 1) / 2) * width, [s[0] for s in stats], width,
               yerr=[s[1] for s in stats], capsize=1.5, label=_label(key), color=colours(i % 10),
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(np.arange(len(conditions)), [name for name, _ in conditions])
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(4, len(keys)), frameon=False)
    _save(fig, plt, path)


def _curves_figure(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, cells in rows.items():
        curves = [m["training"]["curve"] for _, m in cells]
        epochs = sorted(int(e.removeprefix("epoch")) for e in curves[0])
        label = f"{key[0]}/{key[1]}: {_label(key)}" if len({k[:2] for k in rows}) > 1 else _label(key)
        for ax, name in ((loss_ax, "train_loss"), (acc_ax, "val_accuracy")):
            values = np.array([[c[f"epoch{e}"][name] for e in epochs] for c in curves])
            ax.errorbar(epochs, values.mean(axis=0), yerr=values.std(axis=0, ddof=1) if len(values) > 1 else None,
                        marker="o", capsize=2, label=label)
    loss_ax.set(xlabel="epoch", ylabel="training loss (mean over epoch)", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (upright)", title="validation accuracy (model selection)")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*loss_ax.get_legend_handles_labels(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=4, frameon=False)
    fig.tight_layout()
    _save(fig, plt, path)


def _depth_words(params: ImagesParams, backbone: str) -> str:
    depth = params.train.trainable_depth
    if depth == "all":
        return "the whole network trained on images transformed on the fly"
    units = BACKBONE_UNITS[backbone]
    return (f"the top {depth} of its {units} units and the new head trained; the lower {units - depth} frozen, their "
            "outputs on every image moved by each element of D4 computed once and shared by every method and seed")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _error(metrics: list[dict], group: str) -> str:
    values = [m["invariance_error"].get(group) for m in metrics]
    return "—" if any(v is None for v in values) else f"{max(values):.1e}"


def _dataset_section(rows: dict, keys: list[tuple], dataset: str, backbone: str, params: ImagesParams,
                     figures_dir: Path, link) -> list[str]:
    seeds = len(params.grid.seeds)
    lines = [f"### {backbone} on {dataset}", "", f"Backbone: {_depth_words(params, backbone)}.", ""]

    summary = [[_label(k)] + [_fmt([getter(m) for _, m in rows[k]]) for getter in (
        lambda m: m["test_accuracy_upright"], lambda m: expected_accuracy(m, ROTATION_NAMES),
        lambda m: m["test_accuracy_random"]["c4"], lambda m: expected_accuracy(m, D4_ELEMENTS),
        lambda m: m["test_accuracy_random"]["d4"])]
        + [_error([m for _, m in rows[k]], g) for g in ("c4", "d4")] for k in keys]
    lines += ["Accuracy (%) on the test split, mean ± std over seeds: upright, and with each test image rotated "
              "(C4, the paper's metric) or rotated and possibly mirrored (D4) by a random element. *expected*: the "
              "accuracy in expectation over a uniformly random element, i.e. the mean of the per-element accuracies "
              "below (exact, the headline); *one draw*: each test image moved by its own seeded random element, one "
              "draw shared by every method and seed, so its ± leaves out the draw's own noise. Invariance error: "
              "max |f(g·x) − f(x)| over the group's elements and a batch of test inputs, float32, max over seeds.", ""]
    lines += _table(["method", "upright", "expected C4", "C4, one draw", "expected D4", "D4, one draw",
                     "C4 invariance error", "D4 invariance error"], summary)

    rotation_conditions = [(ELEMENT_LABELS[n], lambda m, n=n: m["test_accuracy_by_element"][n]) for n in ROTATION_NAMES]
    rotation_conditions.append(("random C4", lambda m: m["test_accuracy_random"]["c4"]))
    c4_rows = [[_label(k)] + [_fmt([get(m) for _, m in rows[k]]) for _, get in rotation_conditions]
               + [_fmt([m["test_accuracy_rotation_spread"] for _, m in rows[k]])] for k in keys]
    lines += ["", "#### Under rotation (C4)", ""]
    lines += _table(["method", *[name for name, _ in rotation_conditions], "spread over rotations"], c4_rows)
    figure = figures_dir / f"accuracy_by_rotation-{dataset}-{backbone}.png"
    _bars_figure(rows, keys, rotation_conditions,
                 f"{backbone} fine-tuned on upright {dataset}: test accuracy by rotation "
                 f"(mean ± std over {seeds} seeds)", figure)
    lines += ["", f"![accuracy by rotation]({link(figure)})", ""]

    element_conditions = [(ELEMENT_LABELS[n], lambda m, n=n: m["test_accuracy_by_element"][n]) for n in D4_ELEMENTS]
    element_conditions.append(("random D4", lambda m: m["test_accuracy_random"]["d4"]))
    d4_rows = [[_label(k)] + [_fmt([get(m) for _, m in rows[k]]) for _, get in element_conditions] for k in keys]
    lines += ["#### Under rotations and mirrors (D4)", "",
              "\"mirror\" = left-right flip, then the rotation; mirror+180° is the top-bottom flip.", ""]
    lines += _table(["method", *[name for name, _ in element_conditions]], d4_rows)
    figure = figures_dir / f"accuracy_by_element-{dataset}-{backbone}.png"
    _bars_figure(rows, keys, element_conditions,
                 f"{backbone} fine-tuned on upright {dataset}: test accuracy by D4 element "
                 f"(mean ± std over {seeds} seeds)", figure)
    lines += ["", f"![accuracy by D4 element]({link(figure)})", ""]

    # This dataset's own classes in first-seen order; a class absent from a small test subset is absent from that
    # cell's metrics and shown as "-".
    classes = list(dict.fromkeys(c for k in keys for _, m in rows[k] for c in m["per_class_accuracy_upright"]))
    for title, getter in (("upright", lambda m: m["per_class_accuracy_upright"]),
                          ("randomly rotated (random C4)", lambda m: m["per_class_accuracy_random"]["c4"])):
        per_class = [[_label(k)] + [_class_mean([getter(m)[c] for _, m in rows[k] if c in getter(m)])
                                    for c in classes] for k in keys]
        lines += [f"Per-class accuracy, {title} test images (%, mean over seeds):", ""]
        lines += _table(["method", *classes], per_class) + [""]
    return lines


def _class_mean(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.0f}" if values else "-"


def build_images_report(params: ImagesParams, metrics_dir: Path, figures_dir: Path, features_dir: Path,
                        out: Path) -> str:
    """The section written to ``out``: tables, and figures written to ``figures_dir`` (the feature figures of the
    features stage are in ``features_dir``); links are relative to ``out``'s folder."""
    rows = summarise(params, metrics_dir)

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, out.parent)).as_posix()

    grid, train, data = params.grid, params.train, params.data
    datasets_backbones = sorted({k[:2] for k in rows}, key=lambda db: (grid.datasets.index(db[0]),
                                                                       grid.backbones.index(db[1])))
    lines = [
        "## Image classification: finetune vs equitune under rotations and mirrors (paper section 3.1)",
        "",
        f"ImageNet-pretrained backbones fine-tuned on upright images ({data.train_size or 'all'} training images, "
        f"{data.val_size} validation images carved from the training split for model selection, "
        f"{data.test_size or 'all'} test images from the test split; {params.resolution} px inputs), SGD momentum "
        f"{train.momentum}, lr {train.lr} (new head and lambda MLP: {train.head_lr or train.lr}), {train.lr_schedule} "
        f"schedule, batch {train.batch_size}, {train.epochs} epoch(s), batch norm "
        f"{'frozen on ImageNet statistics' if train.freeze_batchnorm else 'trained'}; the epoch with the best upright "
        f"validation accuracy is kept. Seeds {grid.seeds}. `finetune_augment` trains on images rotated by random "
        "multiples of 90°; the group methods train on upright images and average (equitune), weight (lambda_equitune, "
        f"MLP {train.lambda_hidden}-{train.lambda_hidden}-1 on the features) or select by {train.equizero_proxy} "
        "(equizero) over the transformed copies. Every test image moved by each element of D4 is scored; \"random\" "
        "columns give each test image its own seeded random element, the same for every method.",
        "",
    ]
    for dataset, backbone in datasets_backbones:
        keys = [k for k in rows if k[:2] == (dataset, backbone)]
        lines += _dataset_section(rows, keys, dataset, backbone, params, figures_dir, link)
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
