"""Grid cells of the SCAN experiment: their names (the file names dvc.yaml templates) and the grid check.

A pretraining cell is (split, rnn, seed), ``rnn`` the model's recurrent layer; a tuning cell adds the group its
model is equituned with, so that one pretrained model serves every group tuned on its split. dvc.yaml writes
``models/scan/${split}-${rnn}-${seed}``, ``metrics/scan/pretrain/${split}-${rnn}-${seed}.json`` and
``metrics/scan/tune/${split}-${group}-${rnn}-${seed}.json``; :attr:`ScanCell.name` and :attr:`TuneCell.name` are
those same names, so the report stage finds every cell's file from the grid alone
(tests/dvc/test_stage_paths.py checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.stage import check_in_grid
from .config import ScanParams

__all__ = ["ScanCell", "TuneCell"]


@dataclass(frozen=True)
class ScanCell:
    split: str
    rnn: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.rnn}-{self.seed}"

    def check(self, params: ScanParams) -> None:
        """A stage's cell must come from the params grid (so DVC tracks what ran)."""
        check_in_grid("split", self.split, params.grid.splits)
        check_in_grid("rnn", self.rnn, params.grid.rnns)
        check_in_grid("seed", self.seed, params.grid.seeds)


@dataclass(frozen=True)
class TuneCell:
    split: str
    group: str
    rnn: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.group}-{self.rnn}-{self.seed}"

    @property
    def pretrained(self) -> ScanCell:
        """The pretraining cell whose model this cell tunes."""
        return ScanCell(self.split, self.rnn, self.seed)

    def check(self, params: ScanParams) -> None:
        self.pretrained.check(params)
        check_in_grid(f"group (tuned on {self.split})", self.group, getattr(params.grid.groups, self.split))

