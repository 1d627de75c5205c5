"""Switch a model to eval mode for a while and give every submodule back its own mode afterwards.

``model.train(was_training)`` is not enough to restore: it sets *every* submodule to one mode, which would put a
frozen batch-norm (kept in eval mode while the rest trains) or a frozen slice of a network back into training
mode. A fresh ``nn.Sequential`` slice of an eval-mode network even reports ``training=True`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
