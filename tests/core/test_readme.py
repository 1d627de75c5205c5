"""The README's library example runs as written (with a small random classifier) and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from equitune.core.checks import assert_not_equivariant
from equitune.core.groups import image_action
from equitune.core.wrappers import EquiTune

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## The library in three lines"


def library_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one python block in {SECTION!r}; found {len(blocks)}"
    return blocks[0]


def small_pretrained_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_readme_example_runs_and_prints_a_rounding_sized_invariance_error(capsys):
    pretrained = small_pretrained_classifier()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert_not_equivariant(pretrained, image_action("c4"), images, min_error=1e-2)

    namespace = {"pretrained": pretrained, "images": images}
    exec(compile(library_example(), str(README), "exec"), namespace)

    printed = capsys.readouterr().out.split()
    assert len(printed) == 1
    assert float(printed[0]) < 1e-5  # float32 rounding
    model = namespace["model"]
    assert isinstance(model, EquiTune) and model.backbone is pretrained and model.group.order == 4
