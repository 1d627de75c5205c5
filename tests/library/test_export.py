"""Exported equituned models compute what the eager model computes, and stay invariant.

For C4 and D4, EquiTune around a small CNN and around torchvision's resnet18 (random weights) at 32 px, exported
once per module (ONNX export takes seconds) with an example batch of 2 and run at batches 1, 2 and 3:

- eager vs the ``torch.export`` program, and eager vs the ONNX file run by onnxruntime: max |difference| within
  ``FLOAT32 * max(1, max |eager output|)``, with ``FLOAT32`` the checker's float32 tolerance (1e-5): round-off only.
  The program runs the same kernels (measured difference 0); onnxruntime's own kernels differ by at most 4e-7 here.
- the exported file is invariant: ``assert_equivariant`` on the onnxruntime callable, every element of the group
  (the same float32 tolerance); the bare backbone exported the same way is not (``assert_not_equivariant``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from torch import nn

from equitune.core.checks import TOLERANCES, assert_equivariant, assert_not_equivariant
from equitune.core.errors import ConfigError
from equitune.core.groups import WordCycles, image_action
from equitune.core.wrappers import EquiTune, EquiZero, LambdaEquiTune
from equitune.export import export_onnx, export_program, onnx_session

FLOAT32 = TOLERANCES[torch.float32]
SIZE, EXAMPLE_BATCH, OTHER_BATCHES = 32, 2, (1, 3)
GROUPS = ["c4", "d4"]


def small_cnn() -> nn.Module:
    """``[B, 3, 32, 32] -> [B, 10]``; its flatten + linear head sees absolute positions (far from invariant)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * (SIZE // 2) ** 2, 10))


BACKBONES = {"small_cnn": small_cnn, "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10)}


def seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory().eval()


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """max |actual - expected| and the tolerance it must be within."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == torch.float32
    return float((actual - expected).abs().max()), FLOAT32 * max(1.0, float(expected.abs().max()))


@dataclass
class Exported:
    model: nn.Module
    action: object
    program: torch.export.ExportedProgram
    path: Path

    @property
    def session(self):
        return onnx_session(self.path, threads=1)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module", params=[(g, b) for g in GROUPS for b in BACKBONES], ids=lambda p: f"{p[0]}-{p[1]}")
def equituned(request, export_dir) -> Exported:
    group, backbone = request.param
    action = image_action(group)
    model = EquiTune(seeded(BACKBONES[backbone]), action).eval()
    example = images(EXAMPLE_BATCH)
    path = export_onnx(model, example, export_dir / f"{group}-{backbone}.onnx")
    return Exported(model, action, export_program(model, example), path)


@pytest.fixture(scope="module", params=list(BACKBONES))
def bare_onnx(request, export_dir):
    backbone = seeded(BACKBONES[request.param])
    return backbone, onnx_session(export_onnx(backbone, images(EXAMPLE_BATCH), export_dir / f"bare-{request.param}.onnx"),
                                  threads=1)


# ------------------------------------------------------------------------------------- same outputs as eager
@torch.no_grad()
def test_exported_program_matches_eager_at_any_batch_and_is_invariant(equituned):
    exported = equituned.program.module()
    for batch in (EXAMPLE_BATCH, *OTHER_BATCHES):
        x = images(batch, seed=batch)
        difference, tolerance = max_difference(exported(x), equituned.model(x))
        assert difference <= tolerance, f"batch {batch}: {difference:.3g} > {tolerance:.3g}"
    assert_equivariant(exported, equituned.action, images(3, seed=5))


@torch.no_grad()
def test_onnx_matches_eager_at_any_batch(equituned):
    session = equituned.session
    for batch in (EXAMPLE_BATCH, *OTHER_BATCHES):
        x = images(batch, seed=batch)
        difference, tolerance = max_difference(session(x), equituned.model(x))
        assert difference <= tolerance, f"batch {batch}: {difference:.3g} > {tolerance:.3g}"
    numpy_out = session(images(3).numpy())
    assert not isinstance(numpy_out, torch.Tensor) and numpy_out.shape == (3, 10)
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) \(input_0\); got 2"):
        session(images(2), images(2))


def test_onnx_file_has_a_dynamic_batch_axis(equituned):
    graph = onnx.load(str(equituned.path)).graph
    assert [node.name for node in graph.input] == ["input_0"] and [node.name for node in graph.output] == ["output"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


# --------------------------------------------------------------------------------------- invariance kept
def test_onnx_file_is_invariant_for_every_element(equituned):
    errors = assert_equivariant(equituned.session, equituned.action, images(3, seed=7))
    assert len(errors) == equituned.action.group.order


@pytest.mark.parametrize("group", GROUPS)
def test_bare_backbone_exported_the_same_way_is_not_invariant(bare_onnx, group):
    backbone, session = bare_onnx
    x = images(3, seed=7)
    with torch.no_grad():
        difference, tolerance = max_difference(session(x), backbone(x))
    assert difference <= tolerance  # the file is the backbone, faithfully
    assert_not_equivariant(session, image_action(group), x)


# ------------------------------------------------------------------ the other wrappers export as well
@pytest.mark.parametrize("wrapper", ["lambda_equitune", "equizero"])
def test_lambda_equitune_and_equizero_export_and_stay_invariant(wrapper, tmp_path):
    action = image_action("c4")
    backbone = seeded(small_cnn)
    if wrapper == "equizero":
        model = EquiZero(backbone, action).eval()
    else:
        lambda_net = seeded(lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 30 * 30, 1)), 1)
        model = LambdaEquiTune(backbone, lambda_net, action).eval()
    session = onnx_session(export_onnx(model, images(EXAMPLE_BATCH), tmp_path / "model.onnx"), threads=1)
    x = images(3, seed=3)
    with torch.no_grad():
        difference, tolerance = max_difference(session(x), model(x))
    assert difference <= tolerance
    assert_equivariant(session, action, x)


# ---------------------------------------------------------------------------------------------- bad input
def test_a_model_in_training_mode_is_refused_naming_the_modules():
    model = EquiTune(small_cnn(), image_action("c4"))  # nn.Module starts in training mode
    with pytest.raises(ConfigError, match=r"EquiTune is in training mode .*call model.eval\(\)"):
        export_program(model, images(2))
    model.eval()
    model.backbone[0].train()  # one submodule left training is enough to change what the model computes
    with pytest.raises(ConfigError, match=r"training mode \(1 module\(s\): backbone.0\)"):
        export_program(model, images(2))


@pytest.mark.parametrize("example", [None, ()])
def test_example_inputs_are_required(example, tmp_path):
    model = EquiTune(small_cnn(), image_action("c4")).eval()
    with pytest.raises(ConfigError, match="example_inputs is required"):
        export_program(model, example)
    with pytest.raises(ConfigError, match="example_inputs is required"):
        export_onnx(model, example, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_example_inputs_must_be_tensors_with_one_batch_size():
    model = EquiTune(small_cnn(), image_action("c4")).eval()
    with pytest.raises(TypeError, match="input 0 is ndarray"):
        export_program(model, images(2).numpy())
    with pytest.raises(ConfigError, match="one batch size"):
        export_program(model, (images(2), torch.zeros(3)))


def test_token_id_wrappers_are_refused_saying_why():
    ids = WordCycles([["jump", "run"]]).bind(["jump", "run", "walk"]).on_ids
    model = EquiZero(nn.Sequential(nn.Embedding(3, 2), nn.Flatten(), nn.Linear(8, 3)), ids).eval()
    with pytest.raises(ConfigError, match="EquiZero .* acts on token ids .*cannot trace"):
        export_program(model, torch.zeros(2, 4, dtype=torch.long))


@torch.no_grad()
def test_an_example_batch_of_one_still_gives_a_dynamic_batch_and_fixed_shapes_when_asked():
    model = EquiTune(seeded(small_cnn), image_action("c4")).eval()
    dynamic = export_program(model, images(1)).module()
    x = images(3)
    assert float((dynamic(x) - model(x)).abs().max()) <= FLOAT32
    fixed = export_program(model, images(2), dynamic_batch=False).module()
    fixed(images(2))
    with pytest.raises(AssertionError, match=r"size\(\)\[0\] == 2"):  # torch's guard on the fixed batch
        fixed(x)


def test_a_missing_onnx_package_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"pip install equitune\[export\]"):
        onnx_session(tmp_path / "model.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"needs 'onnxscript'.*pip install equitune\[export\]"):
        export_onnx(EquiTune(small_cnn(), image_action("c4")).eval(), images(2), tmp_path / "model.onnx")


def test_onnx_session_says_when_the_file_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        onnx_session(tmp_path / "absent.onnx")
