"""Curve files (src/equitune/pipeline/curves.py): what a training stage hands DVC's plots."""

from __future__ import annotations

import csv
import math

import pytest

from equitune.core.errors import ConfigError, DataError
from equitune.pipeline.curves import Curve, read_curve


def read(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_values_logged_at_one_step_fill_one_row_in_step_order(tmp_path):
    curve = Curve(tmp_path / "plots" / "cell.csv", x="epoch", y=("train_loss", "val_accuracy"))
    curve.add(2, {"train_loss": 0.5, "val_accuracy": 0.75, "lr": 0.1})  # lr: not a column of this curve
    curve.add(1, {"train_loss": 0.9})
    curve.add(1, {"val_accuracy": 0.5})
    curve.add(3, {"seconds": 12.0})  # nothing of the curve: no row
    path = curve.write()
    assert path == tmp_path / "plots" / "cell.csv"
    assert path.read_text().splitlines()[0] == "epoch,train_loss,val_accuracy"
    assert read(path) == [{"epoch": "1", "train_loss": "0.9", "val_accuracy": "0.5"},
                          {"epoch": "2", "train_loss": "0.5", "val_accuracy": "0.75"}]


def test_a_value_missing_at_a_step_leaves_its_cell_empty_and_values_keep_full_precision(tmp_path):
    curve = Curve(tmp_path / "c.csv", x="step", y=("equitune", "equizero"))
    curve.add(0, {"equitune": 1 / 3, "equizero": 0.25})
    curve.add(50, {"equizero": 0.5})
    rows = read(curve.write())
    assert rows[1] == {"step": "50", "equitune": "", "equizero": "0.5"}
    assert float(rows[0]["equitune"]) == 1 / 3


def test_bad_curves_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="csv"):
        Curve(tmp_path / "c.json", x="epoch", y=("loss",))
    with pytest.raises(ConfigError, match="distinct"):
        Curve(tmp_path / "c.csv", x="epoch", y=("loss", "loss"))
    with pytest.raises(ConfigError, match="distinct"):
        Curve(tmp_path / "c.csv", x="epoch", y=("epoch",))
    with pytest.raises(ValueError, match="non-finite"):
        Curve(tmp_path / "c.csv", x="epoch", y=("loss",)).add(0, {"loss": math.nan})


def test_the_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous file and no temporary file behind."""
    path = tmp_path / "c.csv"
    path.write_text("epoch,loss\n0,1\n")
    curve = Curve(path, x="epoch", y=("loss",))
    curve.add(0, {"loss": 0.5})
    monkeypatch.setattr("pathlib.Path.write_text", lambda self, text: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        curve.write()
    monkeypatch.undo()
    assert path.read_text() == "epoch,loss\n0,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]


def test_read_curve_gives_back_what_was_written_empty_cells_left_out(tmp_path):
    curve = Curve(tmp_path / "c.csv", x="step", y=("equitune", "equizero"))
    curve.add(100, {"equizero": 0.5})
    curve.add(0, {"equitune": 1 / 3, "equizero": 0.25})
    assert read_curve(curve.write(), "scan_tune") == {0: {"equitune": 1 / 3, "equizero": 0.25}, 100: {"equizero": 0.5}}


def test_read_curve_names_the_stage_to_run_when_the_file_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"missing: run dvc repro images_tune_group@cell"):
        read_curve(tmp_path / "cell.csv", "images_tune_group@cell")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no header"):
        read_curve(tmp_path / "empty.csv", "scan_tune")
