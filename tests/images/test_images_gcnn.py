"""The from-scratch steerable G-CNN baseline (method gcnn, src/equitune/images/gcnn.py): exactly invariant in
float64 on every element of its group (and the check fails on a plain CNN and on the C4 network under mirrors);
one cell trains and evaluates on tiny images with one network call per image and saves a model that reloads to
the same logits; bad params are refused naming the key (the tune stage exits 2 before any work)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.errors import ConfigError
from equitune.core.groups import image_action
from equitune.images.config import ImagesParams
from equitune.images.gcnn import SteerableCNN, build_gcnn
from equitune.images.methods import build_method, method_group
from helpers.images_tiny import tiny_params

CLASSES = tuple("abcde")
SMALL = [8, 8, 16]  # three layers: sides divisible by 8


def images(count: int = 4, side: int = 16, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(count, 1, side, side, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def gcnn(group: str, dtype=torch.float64, seed: int = 0) -> SteerableCNN:
    torch.manual_seed(seed)
    model = build_gcnn(group, 1, SMALL, len(CLASSES), head_hidden=8, dtype=dtype)
    # Batch norm with statistics away from the identity, so that the test does not rest on a trivial layer.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_gcnn_is_exactly_invariant_in_float64_on_every_element(group):
    model = gcnn(group)
    x = images()
    errors = assert_equivariant(model, image_action(group), x)  # float64: within 1e-10 x max |logit|
    assert len(errors) == image_action(group).group.order
    assert max(errors.values()) < 1e-13  # at float64 round-off, not merely within the tolerance
    assert model(x).dtype == torch.float64 and model(x).shape == (4, len(CLASSES))


def test_the_check_fails_where_invariance_is_not_built_in():
    """A plain CNN of the same shape is not invariant; the C4 network is not invariant under mirrors."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(CLASSES))).double()
    assert_not_equivariant(plain.eval(), image_action("c4"), images())
    assert_not_equivariant(gcnn("c4"), image_action("d4"), images())


def test_float32_models_are_invariant_within_float32_round_off():
    model = gcnn("d4", dtype=torch.float32)
    assert_equivariant(model, image_action("d4"), images(dtype=torch.float32))


def test_inputs_the_pools_cannot_halve_exactly_are_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        gcnn("c4")(images(side=20))


def test_gcnn_is_not_a_wrapper_and_needs_c4_or_d4():
    assert method_group("gcnn", "d4") == "d4"
    for group in ("hflip", "trivial"):
        with pytest.raises(ConfigError, match="gcnn"):
            method_group("gcnn", group)
    with pytest.raises(ValueError, match="trains its own network"):
        build_method("gcnn", "c4", classifier=None)
    with pytest.raises(ConfigError, match="multiples of \\|c4\\| = 4"):
        build_gcnn("c4", 1, [6], 3)


def test_a_cell_trains_evaluates_and_saves_a_model_that_reloads_to_its_logits():
    from equitune.images.cells import Cell
    from equitune.images.evaluation import metrics_from_logits
    from equitune.images.experiment import run_cell
    from equitune.images.inputs import image_logits
    from helpers.images_tiny import random_images

    section = tiny_params(2).model_dump()
    section["train"]["gcnn"] = {"channels": SMALL, "epochs": 2, "lr": 0.05}
    params = ImagesParams.model_validate(section)
    data = random_images({"train": 12, "validation": 6, "test": 6}, len(CLASSES))
    cell = Cell("fashion_mnist", "efficientnet_lite0", "gcnn", "c4", 0)
    torch.manual_seed(0)
    result = run_cell(params, cell, data, CLASSES, None, torch.Generator().manual_seed(0), torch.device("cpu"))
    metrics = result.metrics
    assert metrics["inference"]["backbone_calls_per_image"] == 1.0 and metrics["inference"]["images_per_second"] > 0
    assert metrics["training"]["seconds"] > 0 and len(result.curves["epochs"]) == 2
    assert metrics["invariance_error"]["c4"] < 1e-5  # float32
    assert metrics["test_accuracy_rotation_spread"] == 0  # the same prediction on every quarter turn
    model = build_gcnn("c4", 1, SMALL, len(CLASSES)).eval()
    model.load_state_dict(result.state)
    logits = image_logits(model, data["test_x"], params.resolution, 4, torch.device("cpu"))
    again = metrics_from_logits(logits, data["test_y"], CLASSES, params.evaluation.rotation_seed)
    for key in ("test_accuracy_by_element", "test_accuracy_random"):
        assert again[key] == metrics[key], key


def _groups_with_a_mirror(section):
    section["grid"]["groups"] = ["c4", "hflip"]


def _channels_not_multiples_of_8(section):
    section["train"]["gcnn"]["channels"] = [8, 12]


def _resolution_the_pools_cannot_halve(section):
    section["resolution"] = 36


@pytest.mark.parametrize("spoil, fragment", [
    (_groups_with_a_mirror, "images.grid.groups ['hflip']: the gcnn method"),
    (_channels_not_multiples_of_8, "images.train.gcnn.channels must be multiples of 8"),
    (_resolution_the_pools_cannot_halve, "images.resolution=36 must be divisible by 8 for the gcnn method"),
])
def test_params_refuse_a_gcnn_that_cannot_be_built(spoil, fragment):
    section = tiny_params(2).model_dump()
    section["grid"]["group_methods"] = ["equitune", "gcnn"]
    ImagesParams.model_validate(section)  # valid as it stands
    spoil(section)
    with pytest.raises(ValidationError) as error:
        ImagesParams.model_validate(section)
    assert fragment in str(error.value)


def test_tune_stage_exits_2_on_bad_gcnn_params_before_any_work(tmp_path, monkeypatch, capsys):
    import yaml

    from equitune.pipeline.stage import run_stage
    from helpers.paths import ROOT, stage_argv, stage_main

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["images"]["train"]["gcnn"] = {"channels": [16, 30]}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    argv = stage_argv("images_tune_group@fashion_mnist-efficientnet_lite0-equitune-c4-0", method="gcnn")
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage_main("images/tune"), [*argv, "--params", str(params)])
    assert exit_info.value.code == 2
    assert "images.train.gcnn.channels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
