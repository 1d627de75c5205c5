"""Grid cells of the image experiment: names, the command-line arguments that name one, and the grid check.

dvc.yaml writes ``outputs/images/train/<name>`` and ``metrics/images/<name>.json`` with
``<name> = ${item.dataset}-${item.backbone}-${item.method}-${item.group}-s${item.seed}``; :attr:`Cell.name` is that
same name, so the report stage finds every cell's file from the grid alone (a test checks the two agree).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..pipeline.stage import check_in_grid
from .config import BASELINE_METHODS, ImagesParams

__all__ = ["Cell", "add_cell_arguments", "grid_cells"]


@dataclass(frozen=True)
class Cell:
    dataset: str
    backbone: str
    method: str
    group: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.backbone}-{self.method}-{self.group}-s{self.seed}"

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Cell:
        return cls(args.dataset, args.backbone, args.method, args.group, args.seed)

    def check(self, params: ImagesParams) -> None:
        """A stage's cell must come from the params grid (so DVC tracks what ran); baselines use group trivial."""
        grid = params.grid
        check_in_grid("dataset", self.dataset, grid.datasets)
        check_in_grid("backbone", self.backbone, grid.backbones)
        check_in_grid("method", self.method, grid.baseline_methods + grid.group_methods)
        check_in_grid("group", self.group, ["trivial"] if self.method in BASELINE_METHODS else grid.groups)
        check_in_grid("seed", self.seed, grid.seeds)


def add_cell_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options that name one cell of the grid (``--dataset ... --seed``)."""
    for name in ("dataset", "backbone", "method", "group"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--seed", required=True, type=int)
    return parser


def grid_cells(params: ImagesParams) -> list[Cell]:
    """Every cell of the grid, in a stable order: baselines once per backbone/seed, group methods per group."""
    grid = params.grid
    cells = []
    for dataset in grid.datasets:
        for backbone in grid.backbones:
            for seed in grid.seeds:
                cells += [Cell(dataset, backbone, m, "trivial", seed) for m in grid.baseline_methods]
                cells += [Cell(dataset, backbone, m, g, seed) for m in grid.group_methods for g in grid.groups]
    return cells
