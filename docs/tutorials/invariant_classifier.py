"""# Make your own image classifier rotation-invariant

An image classifier usually changes its answer when the picture is turned by a quarter turn. Equi-tuning wraps it so
that it cannot: `EquiTune(classifier, image_action("c4"))` runs the classifier on the four rotations of every image
(as one batch) and averages the class scores, `M_G(x) = 1/|G| sum_g M(g x)`. Turning the input only reorders the
four terms, so the average is exactly invariant, whatever the classifier's weights; fine-tuning the wrapped model
(an ordinary `nn.Module`) then adapts those weights to the averaged prediction.

In this tutorial you will:

1. take a classifier (a small ResNet-style network here; a torchvision model works the same way) and see that it is
   not invariant;
2. wrap it for the rotations C4 and for D4 (rotations and mirror images) and check the invariance in float64;
3. look at what is averaged: the classifier's scores on every transformed copy.

It needs torch alone (the tests run it against the wheel installed with nothing else) and runs in seconds on a CPU.
[Ship it](export-to-onnx.md) exports the wrapped model to ONNX.
"""

# %%
# Any classifier that maps a batch of images `[B, 3, H, W]` to class scores will do: your own, or a torchvision
# model such as `torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)` (give it
# 224-pixel images). Here a small ResNet-style network with random weights keeps the tutorial offline and fast. Put
# the model in eval mode: dropout and batch statistics would make any model look non-invariant.
import torch
from torch import nn

from equitune.core import EquiTune, assert_equivariant, assert_not_equivariant, image_action


class Block(nn.Module):
    """A residual block: two 3x3 convolutions with batch norm, plus the input."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(x + self.body(x))


torch.manual_seed(0)
classifier = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), Block(16), Block(16),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
images = torch.rand(3, 3, 32, 32)

# %%
# The plain classifier is not rotation-invariant: a quarter turn of the images moves its scores.
# `assert_not_equivariant` checks that some rotation moves them by more than 1e-3.
c4 = image_action("c4")  # rotations by 0, 90, 180 and 270 degrees
with torch.no_grad():
    moved = (classifier(c4.apply(images, 1)) - classifier(images)).abs().max()
print(f"plain classifier: a quarter turn moves the class scores by up to {moved:.3f}")
assert_not_equivariant(classifier, c4, images)

# %%
# Wrapped with `EquiTune` for C4, it is invariant. `assert_equivariant` compares `model(g x)` with `model(x)` for
# every rotation `g`; in float64 (`model.double()`) only round-off of about 1e-16 remains, and the check allows
# 1e-10 relative to the size of the scores.
invariant = EquiTune(classifier, c4).eval()
errors = assert_equivariant(invariant.double(), c4, images.double())
print("EquiTune C4, float64, largest change of the scores per rotation:",
      ", ".join(f"{name} {error:.1e}" for name, error in errors.items()))

# %%
# The same for D4, the four rotations and their mirror images (8 elements). The wrapper holds the same classifier,
# which is float64 now.
d4 = image_action("d4")
invariant_d4 = EquiTune(classifier, d4).eval()
errors = assert_equivariant(invariant_d4, d4, images.double())
print(f"EquiTune D4, float64: all {len(errors)} elements within {max(errors.values()):.1e}")

# %%
# What is averaged: `group_outputs` gives the classifier's scores on every transformed copy, one row per element
# (`[|G|, B, classes]`), and the wrapper's output is their mean. Row `g` is the classifier on `g . images`.
with torch.no_grad():
    per_element = invariant_d4.group_outputs(images.double())
    torch.testing.assert_close(per_element.mean(dim=0), invariant_d4(images.double()), rtol=0, atol=1e-12)
    for g in d4.group:
        torch.testing.assert_close(per_element[g], classifier(d4.apply(images.double(), g)), rtol=0, atol=1e-12)
print(f"group_outputs: shape {tuple(per_element.shape)}; row g = classifier(g . images); the output is their mean")
