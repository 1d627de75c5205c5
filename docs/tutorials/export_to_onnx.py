"""# Ship an equituned classifier: torch.export and ONNX

An equituned model is an ordinary `nn.Module`, so it deploys like one. `equitune.export` traces it with
`torch.export` (the |G| transformed copies, the backbone on the batch of copies and the average are all in the
graph) and writes an ONNX file that onnxruntime runs without PyTorch.

In this tutorial you will:

1. wrap torchvision's resnet18 with `EquiTune` for D4 (rotations and mirror images);
2. export it with `torch.export` and to ONNX, with a dynamic batch axis;
3. check that the file computes what the eager model computes, at another batch size, and that it is still
   invariant for every element of D4.

It needs torchvision and the `export` extra (`pip install "equitune[export]" torchvision`) and runs in under 30
seconds on a CPU. `benchmarks/compile_speed.py` measures `torch.compile` of the same wrapper against eager.
"""

# %%
# Random weights keep the tutorial offline; with real weights pass
# `weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1`. Export needs eval mode (`export_onnx` refuses a model
# with any submodule still training: dropout and batch statistics are not what you want to ship).
import tempfile
from pathlib import Path

import torch
import torchvision

from equitune.core import EquiTune, assert_equivariant, assert_not_equivariant, image_action
from equitune.export import export_onnx, export_program, onnx_session

torch.manual_seed(0)
d4 = image_action("d4")
classifier = torchvision.models.resnet18(weights=None, num_classes=10).eval()
model = EquiTune(classifier, d4).eval()
images = torch.rand(2, 3, 32, 32)

# %%
# `export_program` gives the `torch.export` program (for AOTInductor, ExecuTorch or your own passes). Its batch axis
# is dynamic, so it runs at batch 5 although it was traced at batch 2, and it computes exactly what eager computes.
program = export_program(model, images)
batch = torch.rand(5, 3, 32, 32)
with torch.no_grad():
    eager = model(batch)
torch.testing.assert_close(program.module()(batch), eager, rtol=0, atol=1e-5)
print("torch.export program: batch 5 matches eager")

# %%
# `export_onnx` writes the ONNX file (through `torch.onnx.export(dynamo=True)`) and checks it with `onnx.checker`;
# `onnx_session` runs it with onnxruntime like a model, tensors in and tensors out. The file agrees with eager to
# float32 round-off, and the invariance survives the export: `assert_equivariant` checks the file itself for every
# element of D4, while the bare backbone, exported the same way, is not invariant.
with tempfile.TemporaryDirectory() as folder:
    exported = onnx_session(export_onnx(model, images, Path(folder) / "equituned_resnet18.onnx"))
    bare = onnx_session(export_onnx(classifier, images, Path(folder) / "resnet18.onnx"))
    difference = (exported(batch) - eager).abs().max()
    assert difference < 1e-5, difference
    errors = assert_equivariant(exported, d4, batch)  # float32: within 1e-5 of the scores' size
    assert_not_equivariant(bare, d4, batch)
print(f"ONNX file: matches eager within {difference:.1e}; invariant for all {len(errors)} elements of D4 "
      f"(largest change {max(errors.values()):.1e}); the bare backbone's file is not invariant")
