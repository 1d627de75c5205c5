"""Image stages: the params schema (both profiles), grid cells, and bad names or depths rejected before any work
(exit 2, nothing written). The slow test runs prepare -> cache -> tune -> features -> report on a tiny grid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from equitune.images.cells import Cell, grid_cells
from equitune.images.config import ImagesParams
from equitune.pipeline.stage import run_stage
from helpers.paths import ROOT as REPO
from helpers.paths import dvc_commands, profile_data, stage_argv, stage_main

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CELL = "fashion_mnist-efficientnet_lite0-equitune-c4-0"


def images_section(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["images"]


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_both_profiles_validate(profile):
    params = ImagesParams.model_validate(profile_data(profile)["images"])
    assert params.train.momentum == 0.9
    if profile == "paper":
        assert params.grid.backbones == ["alexnet", "resnet18", "vgg11_bn", "densenet121"]
        assert params.grid.datasets == ["cifar10", "hymenoptera"] and params.grid.groups == ["c4", "d4"]
        assert params.grid.seeds == [0, 1, 2] and params.train.epochs == 10
        assert params.train.trainable_depth == "all"  # the paper trains the whole network
    else:
        assert isinstance(params.train.trainable_depth, int)


@pytest.mark.parametrize("key, value, fragment", [
    ("backbones", ["resnet19"], "grid.backbones.0\n  Input should be 'efficientnet_lite0', 'alexnet', 'resnet18', "
                                "'vgg11_bn' or 'densenet121'"),
    ("group_methods", ["equitunee"], "grid.group_methods.0\n  Input should be 'equitune', 'lambda_equitune'"),
    ("groups", ["c5"], "grid.groups.0\n  Input should be 'c4', 'd4', 'hflip' or 'vflip'"),
    ("baseline_methods", ["equitune"], "grid.baseline_methods.0\n  Input should be 'finetune' or 'finetune_augment'"),
    ("datasets", ["mnist"], "grid.datasets.0\n  Input should be 'fashion_mnist', 'cifar10' or 'hymenoptera'"),
    ("groups", ["c4", "c4"], "grid.groups\n  Value error, lists ['c4'] more than once"),
    ("backbones", [], "grid.backbones\n  List should have at least 1 item"),
])
def test_bad_grid_names_are_rejected_with_the_allowed_values(key, value, fragment):
    section = images_section(REPO / "params.yaml")
    section["grid"][key] = value
    with pytest.raises(ValidationError) as error:
        ImagesParams.model_validate(section)
    assert fragment in str(error.value)
    assert all(repr(v) in str(error.value) for v in value)  # the value given is named


@pytest.mark.parametrize("depth, fragment", [
    (19, "images.train.trainable_depth=19 is outside the backbone (efficientnet_lite0 has 18 unit(s)); use 0..18"),
    (-1, "images.train.trainable_depth=-1 is negative"),
    ("most", "trainable_depth"),
])
def test_a_trainable_depth_outside_the_backbone_is_rejected(depth, fragment):
    section = images_section(REPO / "params.yaml")
    section["train"]["trainable_depth"] = depth
    with pytest.raises(ValidationError) as error:
        ImagesParams.model_validate(section)
    assert fragment in str(error.value)


def test_a_torchvision_trunk_is_one_unit():
    section = images_section(REPO / "params.yaml")
    section["grid"]["backbones"] = ["efficientnet_lite0", "resnet18"]
    section["train"]["trainable_depth"] = 2
    with pytest.raises(ValidationError, match=r"resnet18 has 1 unit\(s\)\); use 0..1"):
        ImagesParams.model_validate(section)
    section["train"]["trainable_depth"] = 1
    ImagesParams.model_validate(section)


def test_grid_never_trains_a_baseline_twice():
    section = images_section(REPO / "params.yaml")
    section["grid"].update(groups=["c4", "d4"], seeds=[0, 1], baseline_methods=["finetune", "finetune_augment"],
                           group_methods=["equitune", "equizero"])
    cells = grid_cells(ImagesParams.model_validate(section))
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 2 * (2 + 2 * 2)
    assert all(c.group == "trivial" for c in cells if c.method.startswith("finetune"))


def run_stage_process(stage: str, cwd: Path, params: Path) -> subprocess.CompletedProcess:
    """``stage`` of dvc.yaml as DVC runs it: its script with its arguments, in a subprocess."""
    script = REPO / dvc_commands()[stage][1]
    env = {**os.environ, "DVC_ROOT": str(cwd), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([sys.executable, str(script), *stage_argv(stage), "--params", str(params)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def tiny_params(tmp_path: Path, **grid) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    images = data["images"]
    images["resolution"] = 32
    images["data"].update(train_size=16, validation_size=8, test_size=8, fashion_mnist_dir=str(DEBIAN_DIR), allow_download=False)
    images["grid"].update({"datasets": ["fashion_mnist"], "backbones": ["efficientnet_lite0"],
                           "baseline_methods": ["finetune"], "group_methods": ["equitune"], "groups": ["c4"],
                           "seeds": [0], **grid})
    images["train"].update(epochs=1, batch_size=8, trainable_depth=2)
    images["evaluation"].update(invariance_batch=4, batch_size=8)
    images["figures"].update(feature_resolution=32, feature_channels=2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("overrides, fragment", [
    ({"backbone": "resnet19"}, "backbone='resnet19' is not in the params grid"),
    ({"method": "equi"}, "method='equi' is not in the params grid"),
    ({"group": "c5"}, "group='c5' is not in the params grid"),
    ({"method": "finetune"}, "group='c4' is not in the params grid"),
])
def test_tune_stage_rejects_bad_names_before_any_work(tmp_path, monkeypatch, capsys, overrides, fragment):
    params = tiny_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    argv = stage_argv(f"images_tune_group@{CELL}", **overrides)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage_main("images/tune"), [*argv, "--params", str(params)])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written, not even a store


@pytest.mark.parametrize("stage", ["images/tune", "images/cache"])
def test_stages_reject_a_depth_outside_the_backbone_before_any_work(tmp_path, monkeypatch, capsys, stage):
    params = tiny_params(tmp_path)
    data = yaml.safe_load(params.read_text())
    data["images"]["train"]["trainable_depth"] = 25
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    name = f"images_tune_group@{CELL}" if stage == "images/tune" else "images_cache@fashion_mnist-efficientnet_lite0"
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage_main(stage), [*stage_argv(name), "--params", str(params)])
    assert exit_info.value.code == 2
    assert "images.train.trainable_depth=25 is outside the backbone" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_cell_names():
    cell = Cell("fashion_mnist", "efficientnet_lite0", "equitune", "c4", 1)
    assert cell.name == "fashion_mnist-efficientnet_lite0-equitune-c4-s1"


@pytest.mark.longest(seconds=60)
@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_tiny_pipeline_end_to_end(tmp_path):
    params = tiny_params(tmp_path, group_methods=["equitune", "canonicalize_prior", "gcnn"])
    stages = ["images_prepare@fashion_mnist", "images_cache@fashion_mnist-efficientnet_lite0",
              "images_features@fashion_mnist", "images_tune_baseline@fashion_mnist-efficientnet_lite0-finetune-0",
              f"images_tune_group@{CELL}", "images_tune_group@fashion_mnist-efficientnet_lite0-canonicalize_prior-c4-0",
              "images_tune_group@fashion_mnist-efficientnet_lite0-gcnn-c4-0", "images_report"]
    for stage in stages:
        result = run_stage_process(stage, tmp_path, params)
        assert result.returncode == 0, result.stderr
    import json
    equi = json.loads((tmp_path / "metrics/images/fashion_mnist-efficientnet_lite0-equitune-c4-s0.json").read_text())
    base = json.loads((tmp_path / "metrics/images/fashion_mnist-efficientnet_lite0-finetune-trivial-s0.json").read_text())
    assert equi["invariance_error"]["c4"] < 1e-4 and base["invariance_error"]["c4"] > 1e-4
    rotations = [equi["test_accuracy_by_element"][name] for name in ("identity", "rot90", "rot180", "rot270")]
    assert max(rotations) - min(rotations) == 0  # 8 test images: any flip would show
    canonical = json.loads((tmp_path / "metrics/images/fashion_mnist-efficientnet_lite0-canonicalize_prior-c4-s0.json")
                           .read_text())
    assert canonical["invariance_error"]["c4"] < 1e-4 and 1 <= canonical["inference"]["backbone_calls_per_image"] <= 4
    assert base["posthoc_equitune"]["c4"]["invariance_error"]["c4"] < 1e-4
    scratch = json.loads((tmp_path / "metrics/images/fashion_mnist-efficientnet_lite0-gcnn-c4-s0.json").read_text())
    assert scratch["invariance_error"]["c4"] < 1e-4 and scratch["inference"]["backbone_calls_per_image"] == 1
    report = (tmp_path / "reports/images.md").read_text()
    assert report.startswith("## ") and "equitune (c4)" in report and "finetune" in report
    assert "| posthoc_equitune (d4) |" in report and "| canonicalize_prior (c4) |" in report
    assert "| gcnn (c4) |" in report and "gcnn is the baseline without pretraining" in report
    assert "**What a practitioner should pick**" in report
    assert (tmp_path / "reports/figures/images/features-fashion_mnist.gif").stat().st_size > 0
    for name in ("learning_curves", "accuracy_by_rotation-fashion_mnist-efficientnet_lite0",
                 "accuracy_by_element-fashion_mnist-efficientnet_lite0", "accuracy_vs_cost-fashion_mnist-efficientnet_lite0"):
        assert (tmp_path / f"reports/figures/images/results/{name}.png").stat().st_size > 0
