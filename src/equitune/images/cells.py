"""Grid cells of the image experiment: names, paths and the check that a cell belongs to the params grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..stage import check_in_grid
from .config import BASELINE_METHODS, ImagesParams

__all__ = ["Cell", "grid_cells"]


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

    @property
    def train_dir(self) -> Path:
        return Path("outputs/images/train") / self.name

    @property
    def metrics_path(self) -> Path:
        return Path("metrics/images") / f"{self.name}.json"

    def check(self, params: ImagesParams) -> None:
        """A stage's cell must come from the params grid (so DVC tracks what ran); baselines use group trivial."""
        grid = params.grid
        check_in_grid("dataset", self.dataset, grid.datasets)
        check_in_grid("backbone", self.backbone, grid.backbones)
        check_in_grid("method", self.method, grid.baseline_methods + grid.group_methods)
        check_in_grid("group", self.group, ["trivial"] if self.method in BASELINE_METHODS else grid.groups)
        check_in_grid("seed", self.seed, grid.seeds)


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
