"""The image report aggregates exactly the grid cells of params (mean +- std over seeds) and fails on a missing cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from equitune.core.errors import DataError
from equitune.images.cells import grid_cells
from equitune.images.config import ImagesParams
from equitune.images.evaluation import D4_ELEMENTS
from equitune.images.report import build_section, expected_accuracy
from equitune.pipeline.curves import Curve
from equitune.pipeline.io import write_json

REPO = Path(__file__).resolve().parents[2]


def fake_metrics(upright: float, rotated: float, error: float) -> dict:
    """A metrics file as the tune stage writes it: ``upright`` for the identity, ``rotated`` for every other element."""
    by_element = {name: (upright if name == "identity" else rotated) for name in D4_ELEMENTS}
    classes = {"a": upright, "b": rotated}
    return {
        "test_accuracy_upright": upright, "test_accuracy_random_rotation": (upright + 3 * rotated) / 4,
        "test_accuracy_random": {"c4": (upright + 3 * rotated) / 4, "d4": (upright + 7 * rotated) / 8,
                                 "hflip": (upright + rotated) / 2, "vflip": (upright + rotated) / 2},
        "test_accuracy_by_element": by_element,
        "test_accuracy_by_rotation": {f"accuracy_rot{a}": (upright if a == 0 else rotated) for a in (0, 90, 180, 270)},
        "test_accuracy_rotation_spread": upright - rotated,
        "per_class_accuracy_upright": classes, "per_class_accuracy_random": {g: classes for g in ("c4", "d4")},
        "test_images": 8,
        "invariance_error": {"c4": error, "d4": 2 * error},
        "training": {"best_epoch": 1, "curve": {"epoch1": {"train_loss": 1.0, "val_accuracy": upright},
                                                "epoch2": {"train_loss": 0.5, "val_accuracy": upright}}},
    }


def write_cell(cell, metrics: dict) -> None:
    """A cell's outputs as its stage writes them: the metrics file and the curve file (DVC plots) of its training."""
    write_json(f"metrics/images/{cell.name}.json", metrics)
    curve = Curve(f"plots/images/train/{cell.name}.csv", "epoch", ("train_loss", "val_accuracy"))
    for epoch, values in metrics["training"]["curve"].items():
        curve.add(int(epoch.removeprefix("epoch")), values)
    curve.write()


@pytest.fixture
def params() -> ImagesParams:
    section = yaml.safe_load((REPO / "params.yaml").read_text())["images"]
    section["grid"].update(datasets=["fashion_mnist"], backbones=["efficientnet_lite0"], baseline_methods=["finetune"],
                           group_methods=["equitune"], groups=["c4"], seeds=[0, 1])
    return ImagesParams.model_validate(section)


def render_report(params: ImagesParams, report: str = "reports/images.md", label: str = "x") -> str:
    """The images report from the cell metrics already written, with the feature figure's metrics file beside them."""
    write_json("metrics/images/features-fashion_mnist.json", {
        "backbone": "efficientnet_lite0", "image_index": 0, "label": label, "channels": [1, 2],
        "pretrained_feature_equivariance_error": 6.0, "equituned_feature_equivariance_error": 4e-7})
    return build_section(params, Path("metrics/images"), Path("plots/images/train"),
                         Path("reports/figures/images/results"), Path("reports/figures/images"), Path(report))


def test_report_aggregates_seeds_from_the_grid(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    values = {("finetune", 0): (0.9, 0.3), ("finetune", 1): (0.8, 0.5), ("equitune", 0): (0.7, 0.7), ("equitune", 1): (0.6, 0.6)}
    for cell in grid_cells(params):
        upright, rotated = values[(cell.method, cell.seed)]
        write_cell(cell, fake_metrics(upright, rotated, 1e-7 if cell.method == "equitune" else 0.5))
    write_json("metrics/images/stale-cell-not-in-grid.json", fake_metrics(0.0, 0.0, 9.0))  # must be ignored
    report = render_report(params, label="Trouser")
    assert report.startswith("## ")
    assert "(figures/images/results/learning_curves.png)" in report and "(figures/images/features-fashion_mnist.png)" in report
    finetune_row = next(line for line in report.splitlines() if line.startswith("| finetune |"))
    # upright 90/80 -> 85.0 ± 7.1; expected C4 = mean of the 4 rotations, (0.9+0.9)/4=0.45 and (0.8+1.5)/4=0.575
    # -> 51.2 ± 8.8 (the one-draw column of these fakes is the same); expected D4 (0.9+2.1)/8=0.375 and
    # (0.8+3.5)/8=0.5375 -> 45.6 ± 11.5; C4 error max 0.5
    assert finetune_row.startswith("| finetune | 85.0 ± 7.1 | 51.2 ± 8.8 | 51.2 ± 8.8 | 45.6 ± 11.5 | 45.6 ± 11.5 |")
    assert "5.0e-01 | 1.0e+00 |" in finetune_row
    equitune_row = next(line for line in report.splitlines() if line.startswith("| equitune (c4) |"))
    assert equitune_row.startswith("| equitune (c4) | 65.0 ± 7.1 |") and "1.0e-07 | 2.0e-07 |" in equitune_row
    rotation_row = [line for line in report.splitlines() if line.startswith("| finetune |")][1]  # the C4 table
    assert rotation_row == "| finetune | 85.0 ± 7.1 | 40.0 ± 14.1 | 40.0 ± 14.1 | 40.0 ± 14.1 | 51.2 ± 8.8 | 45.0 ± 21.2 |"
    assert "9.0e+00" not in report and "0.0 ± 0.0 | 0.0 ± 0.0" not in report  # the stale cell is not read
    for name in ("learning_curves", "accuracy_by_rotation-fashion_mnist-efficientnet_lite0",
                 "accuracy_by_element-fashion_mnist-efficientnet_lite0"):
        assert Path(f"reports/figures/images/results/{name}.png").stat().st_size > 0
        assert f"(figures/images/results/{name}.png)" in report
    assert "| method | upright | 90° | 180° | 270° | mirror | mirror+90° | mirror+180° | mirror+270° | random D4 |" in report


def test_report_fails_on_a_missing_cell(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="finetune-trivial-s0.json is missing"):
        render_report(params)


def test_report_fails_on_a_missing_curve_file_naming_the_stage(tmp_path, monkeypatch, params):
    """The learning curves come from the cells' DVC plots files: one missing is an error naming its stage."""
    monkeypatch.chdir(tmp_path)
    for cell in grid_cells(params):
        write_cell(cell, fake_metrics(0.9, 0.5, 0.1))
    Path("plots/images/train/fashion_mnist-efficientnet_lite0-equitune-c4-s1.csv").unlink()
    with pytest.raises(DataError, match=r"equitune-c4-s1.csv is missing: run dvc repro "
                                        r"images_tune_group@fashion_mnist-efficientnet_lite0-equitune-c4-1$"):
        render_report(params)


def test_report_gives_each_dataset_its_own_classes(tmp_path, monkeypatch, params):
    """The paper grid has two datasets (CIFAR-10, Hymenoptera): each section lists its own classes, and a class
    missing from one cell's (small) test subset shows as '-' instead of failing."""
    monkeypatch.chdir(tmp_path)
    params = params.model_copy(update={"grid": params.grid.model_copy(update={
        "datasets": ["fashion_mnist", "hymenoptera"], "seeds": [0]})})
    for cell in grid_cells(params):
        metrics = fake_metrics(0.9, 0.5, 0.1)
        if cell.dataset == "hymenoptera":
            classes = {"ants": 0.5} if cell.method == "finetune" else {"ants": 0.25, "bees": 0.75}
            metrics["per_class_accuracy_upright"] = classes
            metrics["per_class_accuracy_random"] = {"c4": classes, "d4": classes}
        write_cell(cell, metrics)
    for dataset in params.grid.datasets:
        write_json(f"metrics/images/features-{dataset}.json", {
            "backbone": "efficientnet_lite0", "image_index": 0, "label": "x", "channels": [1, 2],
            "pretrained_feature_equivariance_error": 6.0, "equituned_feature_equivariance_error": 4e-7})
    report = build_section(params, Path("metrics/images"), Path("plots/images/train"),
                           Path("reports/figures/images/results"), Path("reports/figures/images"),
                           Path("reports/images.md"))
    lines = report.splitlines()
    assert "| method | a | b |" in lines and "| method | ants | bees |" in lines
    assert "| finetune | 50 | - |" in lines and "| equitune (c4) | 25 | 75 |" in lines


def test_expected_accuracy_is_the_mean_over_the_elements_not_the_one_draw():
    metrics = fake_metrics(0.8, 0.2, 0.0)
    metrics["test_accuracy_random"]["c4"] = 0.99  # a lucky draw must not leak into the expectation
    assert expected_accuracy(metrics, ("identity", "rot90", "rot180", "rot270")) == pytest.approx((0.8 + 3 * 0.2) / 4)
    assert expected_accuracy(metrics, D4_ELEMENTS) == pytest.approx((0.8 + 7 * 0.2) / 8)


def with_cost(metrics: dict, seconds: float, calls: float, rate: float, identity: float | None = None) -> dict:
    metrics["training"]["seconds"] = seconds
    metrics["inference"] = {"backbone_calls_per_image": calls, "images_per_second": rate}
    if identity is not None:
        metrics["inference"]["identity_weight_upright"] = identity
    return metrics


def cost_report(tmp_path, monkeypatch, params, canonical_rotated: float) -> str:
    """finetune (with its post-hoc C4 model), equitune (c4) and canonicalize (c4) over 2 seeds, with costs."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    params = params.model_copy(update={"grid": params.grid.model_copy(update={
        "group_methods": ["equitune", "canonicalize"]})})
    for cell in grid_cells(params):
        if cell.method == "finetune":
            metrics = with_cost(fake_metrics(0.9, 0.3, 0.5), 10.0 + cell.seed, 1, 1000.0)
            metrics["posthoc_equitune"] = {"c4": with_cost(fake_metrics(0.6, 0.6, 1e-7), 0.0, 4, 250.0)}
        elif cell.method == "equitune":
            metrics = with_cost(fake_metrics(0.8, 0.8, 1e-7), 40.0, 4, 250.0)
        else:
            metrics = with_cost(fake_metrics(canonical_rotated, canonical_rotated, 2e-7), 12.0, 1.5 - cell.seed, 800.0,
                                identity=0.25 + 0.5 * cell.seed)
        write_cell(cell, metrics)
    return render_report(params, label="Trouser")


def test_report_shows_posthoc_rows_costs_and_the_cost_figure(tmp_path, monkeypatch, params):
    report = cost_report(tmp_path, monkeypatch, params, canonical_rotated=0.795)
    lines = report.splitlines()
    # post-hoc equitune rows come from the finetune cells' metrics, right after finetune in every table
    summary = [line for line in lines if line.startswith("| posthoc_equitune (c4) |")]
    assert summary and summary[0].startswith("| posthoc_equitune (c4) | 60.0 ± 0.0 | 60.0 ± 0.0 |")
    table = lines[lines.index("#### Cost and what to pick"):]
    header = next(i for i, line in enumerate(table) if line.startswith("| method | upright | expected C4"))
    rows = {line.split(" | ")[0][2:]: line for line in table[header + 2:header + 6]}
    assert list(rows) == ["finetune", "posthoc_equitune (c4)", "equitune (c4)", "canonicalize (c4)"]
    # finetune: 10 and 11 s -> 10.5 ± 0.7; 1 call; C4 error 0.5 (own group C4 for a baseline)
    assert rows["finetune"] == "| finetune | 90.0 ± 0.0 | 45.0 ± 0.0 | 37.5 ± 0.0 | 5.0e-01 | 10.5 ± 0.7 | 1.00 ± 0.00 | 1000 ± 0 | — |"
    # posthoc: the finetune cell's training seconds, |G| = 4 calls, invariant
    assert rows["posthoc_equitune (c4)"].endswith("| 1.0e-07 | 10.5 ± 0.7 | 4.00 ± 0.00 | 250 ± 0 | — |")
    # canonicalize: frames of 1.5 and 0.5 (fakes) -> 1.00 ± 0.71; identity kept 25% and 75% -> 50.0 ± 35.4
    assert rows["canonicalize (c4)"].endswith("| 2.0e-07 | 12.0 ± 0.0 | 1.00 ± 0.71 | 800 ± 0 | 50.0 ± 35.4 |")
    assert Path("reports/figures/images/results/accuracy_vs_cost-fashion_mnist-efficientnet_lite0.png").stat().st_size > 0
    assert "(figures/images/results/accuracy_vs_cost-fashion_mnist-efficientnet_lite0.png)" in report
    # the learning curves figure has no duplicate post-hoc curve; the report still lists it once
    assert report.count("learning_curves.png") == 1


def test_practitioner_advice_follows_the_numbers(tmp_path, monkeypatch, params):
    close = cost_report(tmp_path / "close", monkeypatch, params, canonical_rotated=0.795)
    advice = next(line for line in close.splitlines() if line.startswith("**What a practitioner should pick**"))
    assert "C4 (rotations), the most accurate is **equitune (c4)** (80.0%, 4.00 classifier call(s) per image)" in advice
    assert "**canonicalize (c4)** is within 1 point(s) of it (79.5%) at 1.00 classifier call(s) per image" in advice
    assert "On upright images only, **finetune** is the most accurate (90.0%)." in advice
    far = cost_report(tmp_path / "far", monkeypatch, params, canonical_rotated=0.75)
    advice = next(line for line in far.splitlines() if line.startswith("**What a practitioner should pick**"))
    assert "is within" not in advice and "the most accurate is **equitune (c4)**" in advice
    better = cost_report(tmp_path / "better", monkeypatch, params, canonical_rotated=0.85)
    advice = next(line for line in better.splitlines() if line.startswith("**What a practitioner should pick**"))
    assert "C4 (rotations), the most accurate is **canonicalize (c4)** (85.0%, 1.00 classifier call(s)" in advice
    assert "is within" not in advice  # nothing cheaper is near it


def test_report_tolerates_metrics_without_costs(tmp_path, monkeypatch, params):
    """Metrics written before the costs were measured: dashes, no cost figure, advice without calls."""
    monkeypatch.chdir(tmp_path)
    for cell in grid_cells(params):
        write_cell(cell, fake_metrics(0.9, 0.5, 0.1))
    report = render_report(params)
    assert "| finetune | 90.0 ± 0.0 | 60.0 ± 0.0 | 55.0 ± 0.0 | 1.0e-01 | — | — | — | — |" in report
    assert "accuracy_vs_cost" not in report and "| posthoc_equitune" not in report
    assert "**What a practitioner should pick**" in report


def test_report_renders_the_from_scratch_gcnn_row_and_says_what_it_is(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    params = params.model_copy(update={"grid": params.grid.model_copy(update={"group_methods": ["equitune", "gcnn"]})})
    for cell in grid_cells(params):
        if cell.method == "gcnn":
            metrics = with_cost(fake_metrics(0.7, 0.7, 1e-7), 20.0, 1, 5000.0)
        else:
            metrics = with_cost(fake_metrics(0.9, 0.5 if cell.method == "finetune" else 0.9, 0.1), 10.0, 1, 1000.0)
        write_cell(cell, metrics)
    report = render_report(params)
    assert "| gcnn (c4) | 70.0 ± 0.0 | 70.0 ± 0.0 | 70.0 ± 0.0 | 1.0e-07 | 20.0 ± 0.0 | 1.00 ± 0.00 | 5000 ± 0 | — |" in report
    channels = "-".join(map(str, params.train.gcnn.channels))
    assert f"gcnn is the baseline without pretraining: a steerable G-CNN (e2cnn; C4 or D4 regular fields, {channels} channels" in report
    without = params.model_copy(update={"grid": params.grid.model_copy(update={"group_methods": ["equitune"]})})
    assert "gcnn is the baseline" not in render_report(without, "reports/other.md")
