"""Deploying a wrapped model: ``torch.export`` and ONNX, and a runner to compare the ONNX file with eager.

- :func:`export_program`: a ``torch.export.ExportedProgram`` of a model in eval mode, with a dynamic batch axis;
- :func:`export_onnx`: that program written as an ONNX file (the torch.export-based exporter, ``dynamo=True``) and
  checked with ``onnx.checker``;
- :func:`onnx_session`: the file as a callable on CPU (onnxruntime), taking and returning tensors or numpy arrays,
  so that it can be compared with eager and handed to :func:`equitune.core.checks.assert_equivariant`.

The wrappers export as they are: the |G| transformed copies become flips (reversed slices) and transposes of the
input, the one backbone pass runs on the ``[|G|*B, ...]`` batch and the average (or equizero's argmin and gather, or
lambda-equitune's weights) follows, so the exported graph is invariant as the eager model is, to float32 round-off.
``tests/library/test_export.py`` checks :class:`~equitune.core.wrappers.EquiTune` around a small CNN and
torchvision's resnet18 with the image groups C4 and D4, and :class:`~equitune.core.wrappers.LambdaEquiTune` and
:class:`~equitune.core.wrappers.EquiZero` around the CNN with C4. EquiZero's choice is an argmin over the proxy
scores: where two elements score within round-off of each other, onnxruntime's kernels may pick the other one than
eager, and the outputs then differ by more than round-off.

Not exportable: a wrapper whose input action is a token-id permutation (:class:`~equitune.core.groups.TokenIdAction`),
which checks that the ids are in the vocabulary's range, a test on their values that ``torch.export`` cannot trace;
:func:`export_program` says so before tracing.

ONNX needs the ``export`` extra: ``pip install equitune[export]`` (onnx, onnxruntime, onnxscript); they are imported
only when a function needs them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .core.errors import ConfigError
from .core.groups import TokenIdAction
from .core.wrappers import EquiTune, EquiZero, LambdaEquiTune

__all__ = ["OnnxSession", "export_onnx", "export_program", "onnx_session"]

ExampleInputs = torch.Tensor | Sequence[torch.Tensor]


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"exporting to ONNX needs {module!r}, which is not installed: "
                          "pip install equitune[export] (onnx, onnxruntime, onnxscript)") from error


def _check_exportable(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        shown = ", ".join(training[:3]) + (", ..." if len(training) > 3 else "")
        raise ConfigError(f"{type(model).__name__} is in training mode ({len(training)} module(s): {shown}); "
                          "call model.eval() before exporting: a deployed model must not apply dropout or use batch "
                          "statistics, and EquiZero's training forward is the straight-through estimate, not its "
                          "prediction")
    for name, module in model.named_modules():
        if isinstance(module, (EquiTune, LambdaEquiTune, EquiZero)) and any(
                isinstance(action, TokenIdAction) for action in module.input_actions):
            raise ConfigError(f"{type(module).__name__} {name or '(the model)'} acts on token ids "
                              "(a TokenIdAction), which torch.export cannot trace: the action checks that the ids "
                              "are in the vocabulary's range, a test on the ids' values; export supports "
                              "wrappers whose input actions are image actions (or None)")


def _example_tuple(example_inputs: ExampleInputs | None, dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """The example inputs as the tuple torch.export traces on (a batch of 1 repeated to 2 for a dynamic batch)."""
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if example_inputs is None or not inputs:
        raise ConfigError("example_inputs is required: torch.export traces the model on them; pass one batch of "
                          "what the model will see, e.g. torch.randn(2, 3, 224, 224) (a tuple for several inputs)")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"example_inputs must be tensors, one per positional input; input {i} is "
                            f"{type(x).__name__}")
    if not dynamic_batch:
        return inputs
    batches = {x.shape[0] if x.dim() else None for x in inputs}
    if None in batches or len(batches) != 1:
        raise ConfigError("dynamic_batch=True needs every example input batched on its leading axis with one batch "
                          f"size; got shapes {[tuple(x.shape) for x in inputs]} (pass dynamic_batch=False to export "
                          "these shapes as they are)")
    if batches == {1}:
        # torch.export specialises an axis of size 1 to the constant 1; values do not matter to the trace.
        inputs = tuple(torch.cat([x, x]) for x in inputs)
    return inputs


def _dynamic_shapes(model: nn.Module, count: int) -> tuple:
    """Axis 0 of every input is the dynamic ``batch``, in the structure of ``model.forward``'s signature: the
    wrappers take ``*inputs``, which torch.export sees as one argument holding a tuple."""
    batch = torch.export.Dim("batch", min=1)
    per_input = [{0: batch} for _ in range(count)]
    for position, parameter in enumerate(inspect.signature(model.forward).parameters.values()):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*per_input[:position], tuple(per_input[position:]))
    return tuple(per_input)


def _export(model: nn.Module, example_inputs: ExampleInputs | None, dynamic_batch: bool):
    _check_exportable(model)
    inputs = _example_tuple(example_inputs, dynamic_batch)
    shapes = _dynamic_shapes(model, len(inputs)) if dynamic_batch else None
    return torch.export.export(model, inputs, dynamic_shapes=shapes), inputs, shapes


def export_program(model: nn.Module, example_inputs: ExampleInputs, dynamic_batch: bool = True,
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (in eval mode) traced on ``example_inputs`` (a tensor, or a tuple with one
    tensor per positional input).

    With ``dynamic_batch`` the leading axis of every input is the dynamic dimension ``batch`` (any size >= 1;
    an example batch of 1 is traced as 2, since torch.export would fix an axis of size 1); otherwise every shape is
    fixed to the example's. ``program.module()`` runs it like the model."""
    return _export(model, example_inputs, dynamic_batch)[0]


def export_onnx(model: nn.Module, example_inputs: ExampleInputs, path: str | Path, *, dynamic_batch: bool = True,
                opset_version: int | None = None) -> Path:
    """Write ``model`` (in eval mode) as an ONNX file at ``path`` and check it with ``onnx.checker``; returns the path.

    The program of :func:`export_program` goes through torch's torch.export-based exporter (``dynamo=True``,
    which uses onnxscript). Inputs are named ``input_0``, ``input_1``, ... with the dynamic axis ``batch``; the output
    is ``output`` (``output_0``, ... for several). ``opset_version`` None is the exporter's recommended opset."""
    onnx = _require("onnx")
    _require("onnxscript")
    program, inputs, shapes = _export(model, example_inputs, dynamic_batch)
    outputs = len(program.graph_signature.user_outputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(program, inputs, str(path), dynamo=True, dynamic_shapes=shapes, opset_version=opset_version,
                      input_names=[f"input_{i}" for i in range(len(inputs))],
                      output_names=["output"] if outputs == 1 else [f"output_{i}" for i in range(outputs)],
                      verbose=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


class OnnxSession:
    """An ONNX file run by onnxruntime on the CPU, called like the model: ``session(x)`` or ``session(x, y)``.

    Tensors in, tensors out (on the CPU); numpy arrays in, numpy arrays out. ``session`` is the underlying
    ``onnxruntime.InferenceSession``."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = _require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}; write one with equitune.export.export_onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no notes about folded initialisers on every load
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]

    def __call__(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.path.name} takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}); "
                             f"got {len(inputs)}")
        tensors = any(isinstance(x, torch.Tensor) for x in inputs)
        feed = {name: torch.as_tensor(x).detach().cpu().contiguous().numpy()
                for name, x in zip(self.input_names, inputs, strict=True)}
        outputs = self.session.run(None, feed)
        if tensors:
            outputs = [torch.from_numpy(y) for y in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def onnx_session(path: str | Path, threads: int | None = None) -> OnnxSession:
    """A callable that runs the ONNX file at ``path`` with onnxruntime's CPU provider (``threads`` intra-op threads;
    None: onnxruntime's default, every core)."""
    return OnnxSession(path, threads)
