"""The from-scratch baseline (issue 21 item 2): a small steerable G-CNN (``e2cnn``), invariant by construction and
trained on the raw images with no pretraining, the row that shows what the pretrained backbone is worth.

:class:`SteerableCNN` for group ``c4`` (``gspaces.Rot2dOnR2(N=4)``) or ``d4`` (``FlipRot2dOnR2(N=4)``): the image
(``images.resolution`` px, average-pooled 2x2 first: Fashion-MNIST's 28 px drawn at 48 px hold no finer detail),
then per layer an ``R2Conv`` to regular fields, ``InnerBatchNorm``, ``ReLU`` and a 2x2 max pool (between layers),
then the maximum over each regular field's |G| channels (group pooling: invariant features), the spatial mean and a
small MLP head. Every step commutes with the quarter turns and mirrors of the square grid (the sizes stay even until
the last mean), so the logits are invariant: the tests check it in float64 on every element of C4 and D4.

Why float64 at construction: ``e2cnn`` samples each filter basis in numpy float64 and stores it through
``torch.Tensor(...)``, i.e. in the default dtype. Stored in float32, a basis and its rotated copy differ by one
rounding step and the invariance error of a float64 model is ~1e-7; built under a float64 default (then cast to the
dtype asked for) it is at float64 round-off (~1e-16). ``e2cnn``'s ``GroupPooling`` returns float32 whatever its
input: the pooling here is the same maximum, in the input's dtype.

``e2cnn`` 0.2.3 predates numpy 2: :func:`_numpy2_compatible` replaces the two idioms numpy 2 removed (the bases'
``__hash__`` calls ``ndarray.tostring``; ``kernels.utils`` calls ``np.array(..., copy=False)``) by their numpy 2
spellings, once, before any basis is built (C4 bases do not reach them; D4 bases do). ``e2cnn`` computes its bases in
memory when a network is built (0.1-0.2 s per network here, after ~2 s to import it) and writes no cache to disk.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import ConfigError
from .config import GCNN_GROUP_NAMES

__all__ = ["SteerableCNN", "build_gcnn", "gcnn_parameter_count"]


class _Numpy2Array:
    """``numpy`` as ``e2cnn.kernels.utils`` uses it, with ``array(x, copy=False)`` meaning ``asarray(x)`` (numpy 1's
    meaning; numpy 2 raises when a copy is needed)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def array(obj, *args, copy=True, **kwargs):
        return np.asarray(obj, *args, **kwargs) if copy is False else np.array(obj, *args, copy=copy, **kwargs)


def _irrep_basis_hash(self) -> int:
    """``IrrepBasis.__hash__`` of e2cnn 0.2.3 with ``ndarray.tobytes`` for the removed ``tostring``."""
    def hashable(value):
        return np.asarray(value).tobytes() if isinstance(value, np.ndarray) else value

    return hash(self.in_irrep) + hash(self.out_irrep) + hash(hashable(self.mu)) + hash(hashable(self.gamma))


_PATCHED = False


def _numpy2_compatible():
    """``e2cnn``'s ``gspaces`` and ``nn`` modules, made to run under numpy 2 (idempotent)."""
    global _PATCHED
    from e2cnn import gspaces
    from e2cnn import nn as enn
    if not _PATCHED:
        from e2cnn.kernels import irreps_basis, utils
        utils.np = _Numpy2Array()
        for name in ("R2FlipsSolution", "R2DiscreteRotationsSolution", "R2ContinuousRotationsSolution",
                     "R2FlipsDiscreteRotationsSolution"):
            getattr(irreps_basis, name).__hash__ = _irrep_basis_hash
        _PATCHED = True
    return gspaces, enn


def _gspace(group: str):
    gspaces, _ = _numpy2_compatible()
    if group == "c4":
        return gspaces.Rot2dOnR2(N=4)
    if group == "d4":
        return gspaces.FlipRot2dOnR2(N=4)
    raise ConfigError(f"the gcnn method is built for the groups {', '.join(GCNN_GROUP_NAMES)} (hflip/vflip would "
                      f"need Flip2dOnR2); got {group!r}")


class SteerableCNN(nn.Module):
    """Images ``[B, C, H, W]`` (``H``, ``W`` divisible by ``2 ** len(channels)``) -> class logits ``[B, K]``,
    invariant under ``group``. ``channels``: channels of each layer's output (regular fields of |G| channels each,
    so that C4 and D4 networks of the same ``channels`` cost the same); ``head_hidden``: the hidden width of the
    MLP head on the invariant features (one per field of the last layer)."""

    def __init__(self, group: str, in_channels: int, channels: Sequence[int], num_classes: int, head_hidden: int):
        super().__init__()
        gspace = _gspace(group)
        _, enn = _numpy2_compatible()
        self.group_name, self.order = group, gspace.fibergroup.order()
        if not channels or any(c < 1 or c % self.order for c in channels):
            raise ConfigError(f"gcnn channels must be positive multiples of |{group}| = {self.order}; got "
                              f"{list(channels)}")
        self.in_type = enn.FieldType(gspace, [gspace.trivial_repr] * in_channels)
        layers, previous = [], self.in_type
        for index, width in enumerate(channels):
            out_type = enn.FieldType(gspace, [gspace.regular_repr] * (width // self.order))
            kernel = 5 if index == 0 else 3  # odd kernels centred on a pixel: the grid's rotations map them to themselves
            layers += [enn.R2Conv(previous, out_type, kernel, padding=kernel // 2), enn.InnerBatchNorm(out_type),
                       enn.ReLU(out_type, inplace=True)]
            if index < len(channels) - 1:
                layers.append(enn.PointwiseMaxPool(out_type, 2))
            previous = out_type
        self.body = enn.SequentialModule(*layers)
        fields = channels[-1] // self.order
        self.head = nn.Sequential(nn.Linear(fields, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))
        self.depth = len(channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from e2cnn.nn import GeometricTensor

        side = 2 ** self.depth  # the input pool and the max pools between layers halve even sizes only
        if images.shape[-1] % side or images.shape[-2] % side:
            raise ValueError(f"gcnn inputs must have sides divisible by {side} (exact pooling under rotations); got "
                             f"{tuple(images.shape[-2:])}")
        maps = self.body(GeometricTensor(F.avg_pool2d(images, 2), self.in_type)).tensor
        invariant = maps.unflatten(1, (-1, self.order)).amax(dim=2)  # group pooling over each regular field
        return self.head(invariant.mean(dim=(-2, -1)))


def build_gcnn(group: str, in_channels: int, channels: Sequence[int], num_classes: int, head_hidden: int = 64,
               dtype: torch.dtype = torch.float32) -> SteerableCNN:
    """A fresh :class:`SteerableCNN` in ``dtype``, its filter bases sampled in float64 (see the module's doc)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings():  # e2cnn 0.2.3's own use of deprecated torch idioms, at construction only
            warnings.filterwarnings("ignore", category=UserWarning, module=r"e2cnn\.")
            model = SteerableCNN(group, in_channels, channels, num_classes, head_hidden)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype)


def gcnn_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
