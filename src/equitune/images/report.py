"""The images section of the report and its figures, aggregated from the cells of the params grid (never a glob of
folders): mean +- std over seeds of every accuracy, the measured invariance errors, learning curves, feature figures;
the cost of each method (training seconds, classifier calls and measured images per second at inference) against its
accuracy on transformed images, and a recommendation computed from those numbers.

``posthoc_equitune`` has no cells: each ``finetune`` cell evaluates its classifier averaged over C4 and D4 too, and
its rows here come from those metrics (training: the finetune cell's)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..pipeline.curves import read_curve
from ..pipeline.io import atomic_path, read_json
from ..pipeline.stats import format_mean_std, mean_std
from .cells import Cell, grid_cells
from .config import BACKBONE_UNITS, CANONICALIZATION_METHODS, SCRATCH_METHODS, ImagesParams
from .evaluation import D4_ELEMENTS

__all__ = ["build_section", "collect", "practitioner_advice"]

POSTHOC_METHOD = "posthoc_equitune"  # the key finetune cells write (equitune.images.experiment.POSTHOC_METHOD)
NEAR_BEST = 0.01
"""A method "within one point" of the most accurate one: the practitioner advice prefers the cheapest such method."""

ROTATION_NAMES = D4_ELEMENTS[:4]
ELEMENT_LABELS = {"identity": "upright", "rot90": "90°", "rot180": "180°", "rot270": "270°", "hflip": "mirror",
                  "rot90_after_hflip": "mirror+90°", "vflip": "mirror+180°", "rot270_after_hflip": "mirror+270°"}
"""Column labels of the D4 elements ("mirror" = left-right flip, applied first)."""


def expected_accuracy(metrics: dict, elements: tuple[str, ...]) -> float:
    """Accuracy when each test image is moved by a uniformly random element of ``elements``, in expectation: the
    mean of the per-element accuracies (exact; the "random" columns are one seeded draw of it)."""
    return statistics.fmean(metrics["test_accuracy_by_element"][name] for name in elements)


def collect(params: ImagesParams, metrics_dir: Path) -> dict[tuple, list[tuple[Cell, dict]]]:
    """The grid's metrics: (dataset, backbone, method, group) -> [(cell, metrics)] over seeds, with the post-hoc
    rows of the finetune cells; a missing metrics file is an error."""
    rows: dict[tuple, list[tuple[Cell, dict]]] = {}
    for cell in grid_cells(params):
        path = metrics_dir / f"{cell.name}.json"
        if not path.exists():
            raise DataError(f"{path} is missing: run dvc repro {_stage(cell)}")
        rows.setdefault((cell.dataset, cell.backbone, cell.method, cell.group), []).append((cell, read_json(path)))
    return _with_posthoc_rows(rows)


def _stage(cell: Cell) -> str:
    """The stage that trains ``cell`` (and writes its metrics and curve files), as ``dvc repro`` names it."""
    if cell.group == "trivial":
        return f"images_tune_baseline@{cell.dataset}-{cell.backbone}-{cell.method}-{cell.seed}"
    return f"images_tune_group@{cell.dataset}-{cell.backbone}-{cell.method}-{cell.group}-{cell.seed}"


def _with_posthoc_rows(rows: dict[tuple, list[tuple[Cell, dict]]]) -> dict[tuple, list[tuple[Cell, dict]]]:
    """``rows`` with a ``posthoc_equitune`` row per group after each ``finetune`` row whose cells all evaluated it
    (metrics of the classifier averaged over the group; training: the finetune cell's, nothing more was trained)."""
    out: dict[tuple, list[tuple[Cell, dict]]] = {}
    for key, cells in rows.items():
        out[key] = cells
        if key[2] != "finetune":
            continue
        groups = [g for g in cells[0][1].get(POSTHOC_METHOD, {}) if all(g in m.get(POSTHOC_METHOD, {}) for _, m in cells)]
        for group in groups:
            out[(*key[:2], POSTHOC_METHOD, group)] = [
                (cell, {**m[POSTHOC_METHOD][group], "training": m["training"]}) for cell, m in cells]
    return out


def _gcnn_words(params: ImagesParams) -> str:
    """What the from-scratch row is, when the grid has it (it sits in every backbone's tables but uses none)."""
    if not any(m in SCRATCH_METHODS for m in params.grid.group_methods):
        return ""
    own = params.train.gcnn
    return (" gcnn is the baseline without pretraining: a steerable G-CNN (e2cnn; C4 or D4 regular fields, "
            f"{'-'.join(map(str, own.channels))} channels, group pooling to invariant features, an MLP head) trained "
            f"from scratch on the same {params.resolution} px training images, lr {own.lr}, {own.epochs} epoch(s), "
            "batch norm trained, no backbone and no cache: exactly invariant by construction, one call of its own "
            "small network per test image. The gap to the pretrained rows is what pretraining is worth at this "
            "budget.")


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
        stats = [mean_std([100 * value(m) for _, m in rows[key]]) for _, value in conditions]
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


def _curves_figure(rows: dict, plots_dir: Path, path: Path) -> None:
    """Training loss and validation accuracy per epoch (mean ± std over seeds), read from each cell's curve file
    ``<plots_dir>/<cell>.csv`` (its DVC plots file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, cells in rows.items():
        curves = [read_curve(plots_dir / f"{cell.name}.csv", _stage(cell)) for cell, _ in cells]
        epochs = list(curves[0])
        label = f"{key[0]}/{key[1]}: {_label(key)}" if len({k[:2] for k in rows}) > 1 else _label(key)
        for ax, name in ((loss_ax, "train_loss"), (acc_ax, "val_accuracy")):
            values = np.array([[c[e][name] for e in epochs] for c in curves])
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

    summary = [[_label(k)] + [format_mean_std([getter(m) for _, m in rows[k]]) for getter in (
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
    c4_rows = [[_label(k)] + [format_mean_std([get(m) for _, m in rows[k]]) for _, get in rotation_conditions]
               + [format_mean_std([m["test_accuracy_rotation_spread"] for _, m in rows[k]])] for k in keys]
    lines += ["", "#### Under rotation (C4)", ""]
    lines += _table(["method", *[name for name, _ in rotation_conditions], "spread over rotations"], c4_rows)
    figure = figures_dir / f"accuracy_by_rotation-{dataset}-{backbone}.png"
    _bars_figure(rows, keys, rotation_conditions,
                 f"{backbone} fine-tuned on upright {dataset}: test accuracy by rotation "
                 f"(mean ± std over {seeds} seeds)", figure)
    lines += ["", f"![accuracy by rotation]({link(figure)})", ""]

    element_conditions = [(ELEMENT_LABELS[n], lambda m, n=n: m["test_accuracy_by_element"][n]) for n in D4_ELEMENTS]
    element_conditions.append(("random D4", lambda m: m["test_accuracy_random"]["d4"]))
    d4_rows = [[_label(k)] + [format_mean_std([get(m) for _, m in rows[k]]) for _, get in element_conditions]
               for k in keys]
    lines += ["#### Under rotations and mirrors (D4)", "",
              "\"mirror\" = left-right flip, then the rotation; mirror+180° is the top-bottom flip.", ""]
    lines += _table(["method", *[name for name, _ in element_conditions]], d4_rows)
    figure = figures_dir / f"accuracy_by_element-{dataset}-{backbone}.png"
    _bars_figure(rows, keys, element_conditions,
                 f"{backbone} fine-tuned on upright {dataset}: test accuracy by D4 element "
                 f"(mean ± std over {seeds} seeds)", figure)
    lines += ["", f"![accuracy by D4 element]({link(figure)})", ""]
    lines += _cost_section(rows, keys, dataset, backbone, figures_dir, link)

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


def build_section(params: ImagesParams, metrics_dir: Path, plots_dir: Path, figures_dir: Path, features_dir: Path,
                  out: Path) -> str:
    """The section written to ``out``: tables, and figures written to ``figures_dir`` (the cells' curve files are in
    ``plots_dir``, the feature figures of the features stage in ``features_dir``); links are relative to ``out``'s
    folder."""
    rows = collect(params, metrics_dir)

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, out.parent)).as_posix()

    grid, train, data = params.grid, params.train, params.data
    datasets_backbones = sorted({k[:2] for k in rows}, key=lambda db: (grid.datasets.index(db[0]),
                                                                       grid.backbones.index(db[1])))
    lines = [
        "## Image classification: finetune vs equitune under rotations and mirrors (paper section 3.1)",
        "",
        f"ImageNet-pretrained backbones fine-tuned on upright images ({data.train_size or 'all'} training images, "
        f"{data.validation_size} validation images carved from the training split for model selection, "
        f"{data.test_size or 'all'} test images from the test split; {params.resolution} px inputs), SGD momentum "
        f"{train.momentum}, lr {train.lr} (new head and lambda MLP: {train.head_lr or train.lr}), {train.lr_schedule} "
        f"schedule, batch {train.batch_size}, {train.epochs} epoch(s), batch norm "
        f"{'frozen on ImageNet statistics' if train.freeze_batchnorm else 'trained'}; the epoch with the best upright "
        f"validation accuracy is kept. Seeds {grid.seeds}. `finetune_augment` trains on images rotated by random "
        "multiples of 90°; the group methods train on upright images and average (equitune), weight (lambda_equitune, "
        f"MLP {train.lambda_hidden}-{train.lambda_hidden}-1 on the features) or select by {train.equizero_proxy} "
        "(equizero) over the transformed copies; frame, canonicalize and canonicalize_prior (prior weight "
        f"{train.canonicalization_prior_weight}) average over the copies whose score of the frozen part's maps is "
        "lowest (fixed: minus the top-left quadrant's mean; learned: a linear layer on the 2x2-pooled maps, trained "
        "straight-through with the head), so about one classifier call per image; posthoc_equitune is the finetune "
        "classifier averaged over the group at test time only (no training of its own). Every test image moved by "
        "each element of D4 is scored; \"random\" "
        "columns give each test image its own seeded random element, the same for every method." + _gcnn_words(params),
        "",
    ]
    for dataset, backbone in datasets_backbones:
        keys = [k for k in rows if k[:2] == (dataset, backbone)]
        lines += _dataset_section(rows, keys, dataset, backbone, params, figures_dir, link)
    curves = figures_dir / "learning_curves.png"
    _curves_figure({k: v for k, v in rows.items() if k[2] != POSTHOC_METHOD}, plots_dir, curves)  # posthoc: finetune's curve
    lines += ["### Learning curves", "", f"![learning curves]({link(curves)})", ""]
    lines += ["### Feature maps under rotation", ""]
    for dataset in grid.datasets:
        path = metrics_dir / f"features-{dataset}.json"
        if not path.exists():
            raise DataError(f"{path} is missing: run `dvc repro images_features@{dataset}` first")
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


def _optional(metrics: list[dict], getter: Callable[[dict], float]) -> list[float] | None:
    """``getter`` of every seed's metrics, or None when one lacks it (metrics written before it was measured)."""
    try:
        return [float(getter(m)) for m in metrics]
    except (KeyError, TypeError):
        return None


def _fmt_plain(values: list[float] | None, digits: int) -> str:
    return "—" if values is None else format_mean_std(values, scale=1.0, digits=digits)


def _seconds(m: dict) -> float:
    return m["training"]["seconds"]


def _calls(m: dict) -> float:
    return m["inference"]["backbone_calls_per_image"]


def _images_per_second(m: dict) -> float:
    return m["inference"]["images_per_second"]


def _identity(m: dict) -> float:
    return m["inference"]["identity_weight_upright"]


def _own_group(key: tuple) -> str:
    """The group whose invariance error a method's cost row shows: its own (C4 for the baselines, which have none)."""
    return "c4" if key[3] == "trivial" else key[3]


def _expected_c4(m: dict) -> float:
    return expected_accuracy(m, ROTATION_NAMES)


def _expected_d4(m: dict) -> float:
    return expected_accuracy(m, D4_ELEMENTS)


def _cost_section(rows: dict, keys: list[tuple], dataset: str, backbone: str, figures_dir: Path, link) -> list[str]:
    """Accuracy on transformed images against the cost of each method: a table, a figure and the advice."""
    table = []
    for key in keys:
        metrics = [m for _, m in rows[key]]
        identity = _optional(metrics, _identity) if key[2] in CANONICALIZATION_METHODS else None
        table.append([_label(key), format_mean_std([m["test_accuracy_upright"] for m in metrics]),
                      format_mean_std([_expected_c4(m) for m in metrics]),
                      format_mean_std([_expected_d4(m) for m in metrics]),
                      _error(metrics, _own_group(key)),
                      _fmt_plain(_optional(metrics, _seconds), 1), _fmt_plain(_optional(metrics, _calls), 2),
                      _fmt_plain(_optional(metrics, _images_per_second), 0),
                      "—" if identity is None else format_mean_std(identity)])
    lines = ["#### Cost and what to pick", "",
             "Per method, mean ± std over seeds: accuracy (%) upright and in expectation over a random element of C4 "
             "and of D4; the invariance error under the method's own group (C4 for the baselines); training wall "
             "seconds (validation included; post-hoc equitune trains nothing beyond its finetune cell); classifier "
             "calls per test image at inference (|G| for equitune-like methods, the mean frame size measured on the "
             "upright test inputs for frame and canonicalization, 1 for the baselines); measured inference images "
             "per second on the upright test inputs (wall clock on the machine that ran the cell: compare within one "
             "run); for frame and canonicalization, the share (%) of upright test images the frame leaves upright "
             "(a tie of k elements counts 1/k).", ""]
    lines += _table(["method", "upright", "expected C4", "expected D4", "own-group invariance error",
                     "training s", "classifier calls / image", "inference images/s", "upright kept upright"], table)
    figure = figures_dir / f"accuracy_vs_cost-{dataset}-{backbone}.png"
    if _cost_figure(rows, keys, f"{backbone} on {dataset}: accuracy on transformed test images against inference "
                    "cost (mean ± std over seeds)", figure):
        lines += ["", f"![accuracy against inference cost]({link(figure)})"]
    lines += ["", practitioner_advice(rows, keys), ""]
    return lines


def _cost_figure(rows: dict, keys: list[tuple], title: str, path: Path) -> bool:
    """Expected C4 and D4 accuracy against classifier calls per test image, one point per method (left out when a
    cell lacks its cost); False if no method has one."""
    points = [(k, _optional([m for _, m in rows[k]], _calls)) for k in keys]
    points = [(k, calls) for k, calls in points if calls is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (name, value) in zip(axes, (("C4", _expected_c4), ("D4", _expected_d4)), strict=True):
        for i, (key, calls) in enumerate(points):
            accuracy = mean_std([100 * value(m) for _, m in rows[key]])
            ax.errorbar(statistics.fmean(calls), accuracy[0], yerr=accuracy[1], fmt="os^Dv<>p*h"[i % 10],
                        color=colours(i % 10), capsize=2, label=_label(key))
        ax.set_xscale("log", base=2)
        ax.set(xlabel="classifier calls per test image (log scale)", title=f"random element of {name}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("expected test top-1 accuracy (%)")
    fig.suptitle(title, fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=4, frameon=False)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def practitioner_advice(rows: dict, keys: list[tuple], near_best: float = NEAR_BEST) -> str:
    """"What a practitioner should pick", computed from the metrics: for test images under a random element of C4
    and of D4, the most accurate method (mean over seeds) and the one with the fewest classifier calls per image
    among those within ``near_best`` of it; and the most accurate method on upright images."""
    def mean(key, getter) -> float | None:
        values = _optional([m for _, m in rows[key]], getter)
        return None if values is None else statistics.fmean(values)

    sentences = []
    for name, value in (("C4 (rotations)", _expected_c4), ("D4 (rotations and mirrors)", _expected_d4)):
        accuracy = {k: mean(k, value) for k in keys}
        best = max(keys, key=lambda k: accuracy[k])
        text = (f"Under a random element of {name}, the most accurate is **{_label(best)}** "
                f"({100 * accuracy[best]:.1f}%{_cost_words(best, mean)})")
        near = [k for k in keys if accuracy[k] >= accuracy[best] - near_best and mean(k, _calls) is not None]
        cheapest = min(near, key=lambda k: (mean(k, _calls), -accuracy[k])) if near else None
        if cheapest is not None and cheapest != best and mean(cheapest, _calls) < (mean(best, _calls) or 0):
            text += (f"; **{_label(cheapest)}** is within {100 * near_best:.0f} point(s) of it "
                     f"({100 * accuracy[cheapest]:.1f}%) at {mean(cheapest, _calls):.2f} classifier call(s) per image "
                     f"instead of {mean(best, _calls):.2f}: pick it when inference cost matters")
        sentences.append(text + ".")
    upright = {k: mean(k, lambda m: m["test_accuracy_upright"]) for k in keys}
    best_upright = max(keys, key=lambda k: upright[k])
    sentences.append(f"On upright images only, **{_label(best_upright)}** is the most accurate "
                     f"({100 * upright[best_upright]:.1f}%).")
    return "**What a practitioner should pick** (computed from the table above): " + " ".join(sentences)


def _cost_words(key: tuple, mean) -> str:
    calls = mean(key, _calls)
    return "" if calls is None else f", {calls:.2f} classifier call(s) per image"
