"""Grid cells of the SCAN experiment: their names (the file names dvc.yaml templates) and the grid check.

dvc.yaml writes ``models/scan/${item.split}-${item.cell}-${item.seed}`` and
``metrics/scan/${item.split}-${item.cell}-${item.seed}.json``; :attr:`ScanCell.name` is that same name, so the
report stage finds every cell's file from the grid alone (tests/pipeline/test_stage_paths.py checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.stage import check_in_grid
from .config import ScanParams

__all__ = ["ScanCell", "grid_cells"]


@dataclass(frozen=True)
class ScanCell:
    split: str
    cell: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.cell}-{self.seed}"

    def check(self, params: ScanParams) -> None:
        """A stage's cell must come from the params grid (so DVC tracks what ran)."""
        check_in_grid("split", self.split, params.grid.splits)
        check_in_grid("cell", self.cell, params.grid.cells)
        check_in_grid("seed", self.seed, params.grid.seeds)


def grid_cells(params: ScanParams) -> list[ScanCell]:
    grid = params.grid
    return [ScanCell(split, cell, seed) for split in grid.splits for cell in grid.cells for seed in grid.seeds]
