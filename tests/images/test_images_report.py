"""The image report aggregates exactly the grid cells of params (mean +- std over seeds) and fails on a missing cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from equitune.core.errors import DataError
from equitune.images.cells import grid_cells
from equitune.images.config import ImagesParams
from equitune.images.report import build_images_report
from equitune.pipeline.io import write_json

REPO = Path(__file__).resolve().parents[2]


def fake_metrics(upright: float, rotated: float, error: float) -> dict:
    by_rotation = {"accuracy_rot0": upright, "accuracy_rot90": rotated, "accuracy_rot180": rotated, "accuracy_rot270": rotated}
    classes = {"a": upright, "b": rotated}
    return {
        "test_accuracy_upright": upright, "test_accuracy_random_rotation": (upright + 3 * rotated) / 4,
        "test_accuracy_by_rotation": by_rotation, "test_accuracy_rotation_spread": upright - rotated,
        "per_class_accuracy_upright": classes, "per_class_accuracy_random_rotation": classes, "test_images": 8,
        "invariance_error": {"c4": error},
        "training": {"best_epoch": 1, "curve": {"epoch1": {"train_loss": 1.0, "val_accuracy": upright},
                                                "epoch2": {"train_loss": 0.5, "val_accuracy": upright}}},
    }


@pytest.fixture
def params() -> ImagesParams:
    section = yaml.safe_load((REPO / "params.yaml").read_text())["images"]
    section["grid"].update(datasets=["fashion_mnist"], backbones=["efficientnet_lite0"], baseline_methods=["finetune"],
                           group_methods=["equitune"], groups=["c4"], seeds=[0, 1])
    return ImagesParams.model_validate(section)


def test_report_aggregates_seeds_from_the_grid(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    values = {("finetune", 0): (0.9, 0.3), ("finetune", 1): (0.8, 0.5), ("equitune", 0): (0.7, 0.7), ("equitune", 1): (0.6, 0.6)}
    for cell in grid_cells(params):
        upright, rotated = values[(cell.method, cell.seed)]
        write_json(f"metrics/images/{cell.name}.json", fake_metrics(upright, rotated, 1e-7 if cell.method == "equitune" else 0.5))
    write_json("metrics/images/stale-cell-not-in-grid.json", fake_metrics(0.0, 0.0, 9.0))  # must be ignored
    write_json("metrics/images/features-fashion_mnist.json", {
        "backbone": "efficientnet_lite0", "image_index": 0, "label": "Trouser", "channels": [1, 2],
        "pretrained_feature_equivariance_error": 6.0, "equituned_feature_equivariance_error": 4e-7})
    report = build_images_report(params, Path("metrics/images"), Path("reports/figures/images/results"),
                                 Path("reports/figures/images"), Path("reports/images.md"))
    assert report.startswith("## ")
    assert "(figures/images/results/learning_curves.png)" in report and "(figures/images/features-fashion_mnist.png)" in report
    finetune_row = next(line for line in report.splitlines() if line.startswith("| finetune |"))
    assert "| 85.0 ± 7.1 | 40.0 ± 14.1 |" in finetune_row and "5.00e-01" in finetune_row
    equitune_row = next(line for line in report.splitlines() if line.startswith("| equitune (c4) |"))
    assert "| 65.0 ± 7.1 |" in equitune_row and "1.00e-07" in equitune_row
    assert "9.00e+00" not in report
    assert Path("reports/figures/images/results/learning_curves.png").stat().st_size > 0
    assert Path("reports/figures/images/results/accuracy_by_rotation-fashion_mnist-efficientnet_lite0.png").exists()


def test_report_fails_on_a_missing_cell(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="finetune-trivial-s0.json is missing"):
        build_images_report(params, Path("metrics/images"), Path("reports/figures/images/results"),
                            Path("reports/figures/images"), Path("reports/images.md"))


def test_report_gives_each_dataset_its_own_classes(tmp_path, monkeypatch, params):
    """The paper grid has two datasets (CIFAR-10, Hymenoptera): each section lists its own classes, and a class
    missing from one cell's (small) test subset shows as '-' instead of failing."""
    monkeypatch.chdir(tmp_path)
    params = params.model_copy(update={"grid": params.grid.model_copy(update={
        "datasets": ["fashion_mnist", "hymenoptera"], "seeds": [0]})})
    for cell in grid_cells(params):
        metrics = fake_metrics(0.9, 0.5, 0.1)
        if cell.dataset == "hymenoptera":
            metrics["per_class_accuracy_random_rotation"] = {"ants": 0.5} if cell.method == "finetune" else {
                "ants": 0.25, "bees": 0.75}
        write_json(f"metrics/images/{cell.name}.json", metrics)
    for dataset in params.grid.datasets:
        write_json(f"metrics/images/features-{dataset}.json", {
            "backbone": "efficientnet_lite0", "image_index": 0, "label": "x", "channels": [1, 2],
            "pretrained_feature_equivariance_error": 6.0, "equituned_feature_equivariance_error": 4e-7})
    report = build_images_report(params, Path("metrics/images"), Path("reports/figures/images/results"),
                                 Path("reports/figures/images"), Path("reports/images.md"))
    lines = report.splitlines()
    assert "| method | a | b |" in lines and "| method | ants | bees |" in lines
    assert "| finetune | 50 | - |" in lines and "| equitune (c4) | 25 | 75 |" in lines
