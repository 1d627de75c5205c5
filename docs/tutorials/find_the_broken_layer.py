"""# Why is my model not equivariant?

You built a small CNN that should be invariant to quarter turns (the group C4): its conv kernels are averaged
over the four turns, the nonlinearity acts pixel by pixel, and a global average pool forgets positions. Yet the
checker says it is not invariant. The checker is right, but it only looks at the output, and once one layer breaks
the symmetry every layer after it looks broken too.

In this tutorial you will:

1. see `assert_equivariant` fail on the whole model: it says *that* the model is broken, not *where*;
2. declare how the output of each layer should transform, and let `locate_equivariance_break` run the model on an
   image and on its turned copies and find the first layer whose output does not transform as declared;
3. read its table, fix that one layer without retraining anything else, and check that the model is now invariant.

Everything runs in float64 on the CPU, where an equivariant model is exact up to round-off (errors near 1e-16),
so the checker's tolerance (1e-10, relative to the output's size) separates "exact" from "broken" by far.
"""

# %%
# The group and the inputs. `image_action("c4")` is C4 acting on the last two axes of a tensor `[..., H, W]`:
# on the input images, and also on every feature map `[B, C, H, W]` inside the model, where each channel turns with
# the image. That second use is how we will declare what the conv layers should do.
import torch
from torch import nn

from equitune.core import assert_equivariant, image_action
from equitune.diagnose import locate_equivariance_break

torch.set_num_threads(1)
torch.manual_seed(0)
c4 = image_action("c4")
images = torch.randn(4, 3, 9, 9, dtype=torch.float64)


# %%
# An equivariant conv layer. A kernel that is unchanged by quarter turns gives a convolution that commutes with
# them: turn the image then convolve, or convolve then turn, the result is the same (zero padding is symmetric
# too). `c4.transform_all(weight)` stacks the kernel's four turns; their mean is such a kernel. The layer keeps the
# parameters of a plain `nn.Conv2d`, so the two can load each other's weights.
class QuarterTurnSymmetricConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, c4.transform_all(self.weight).mean(dim=0), self.bias)


class SmallCNN(nn.Module):
    """stem -> tanh -> stage1 -> tanh -> stage2 -> tanh -> global average pool -> linear head."""

    def __init__(self, stage2: nn.Module):
        super().__init__()
        self.stem = QuarterTurnSymmetricConv(3, 8, 3, padding=1, dtype=torch.float64)
        self.act = nn.Tanh()  # one module, called after every conv
        self.stage1 = QuarterTurnSymmetricConv(8, 8, 3, padding=1, dtype=torch.float64)
        self.stage2 = stage2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 5, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.act(self.stage2(self.act(self.stage1(self.act(self.stem(x))))))
        return self.head(self.pool(features).flatten(1))


# %%
# The bug, planted on purpose: `stage2` is a plain `nn.Conv2d`, the kind of slip a refactoring makes. The checker
# compares `model(g x)` with `model(x)` for every turn `g` and fails, naming the turns but not the layer. Put the
# model in `eval()` mode before any check: dropout would draw different masks on `x` and on `g x`.
model = SmallCNN(stage2=nn.Conv2d(8, 8, 3, padding=1, dtype=torch.float64)).eval()
try:
    assert_equivariant(model, c4, images)
except AssertionError as error:
    print(f"assert_equivariant on the whole model:\n{error}\n")
    checker_failed = True
else:
    checker_failed = False
assert checker_failed, "the planted plain conv should make the model not invariant"

# %%
# Declare what each layer should do, by its name in `model.named_modules()`: the conv and tanh outputs are feature
# maps that turn with the image (`c4`: every channel is an image), the pooled features and the head's scores should
# not change at all (`None`: invariant). Undeclared submodules are not checked. The localiser runs the model on the
# images and on each turned copy, records the declared outputs with forward hooks, and compares `h(g x)` with
# `g h(x)` (or `h(x)`) in execution order, with the checker's tolerance. `act` runs three times: its calls are the
# rows `act#1`, `act#2`, `act#3`.
declared = {"stem": c4, "act": c4, "stage1": c4, "stage2": c4, "pool": None, "head": None}
report = locate_equivariance_break(model, c4, images, declared)
print(report, "\n")

first = report.first_break
assert first is not None and first.module == "stage2"
assert first.broken_elements == ("rot90", "rot180", "rot270")  # every turn but the identity
rows = {check.call: check for check in report.checks}
assert [check.call for check in report.checks] == ["stem", "act#1", "stage1", "act#2", "stage2", "act#3", "pool",
                                                   "head"]
assert rows["stem"].ok and rows["act#1"].ok and rows["stage1"].ok and rows["act#2"].ok  # exact before the bug
assert not rows["act#3"].ok and not rows["head"].ok  # ... and broken everywhere after it

# %%
# Fix the one layer the report names. `QuarterTurnSymmetricConv` has the same parameters as `nn.Conv2d`, so the
# fixed model loads every weight of the broken one (nothing is retrained), and only stage2's kernel is now averaged
# over the turns. The localiser finds no break, and the checker agrees on the whole model.
fixed = SmallCNN(stage2=QuarterTurnSymmetricConv(8, 8, 3, padding=1, dtype=torch.float64)).eval()
fixed.load_state_dict(model.state_dict())
fixed_report = locate_equivariance_break(fixed, c4, images, declared)
print(fixed_report)
assert fixed_report.ok and fixed_report.first_break is None
errors = assert_equivariant(fixed, c4, images)
assert max(errors.values()) < 1e-12
print(f"\nafter the fix, the largest error over the four turns is {max(errors.values()):.1e}")
