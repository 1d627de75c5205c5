"""The scan params section: both profiles validate; bad values exit 2 before any output is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from equitune.params import compose, load_params, validate
from equitune.pipeline.stage import run_stage
from helpers.paths import ROOT, stage_argv, stage_main

STAGES = {"prepare": "scan_prepare", "pretrain": "scan_pretrain@add_jump-gru-0", "tune": "scan_tune@add_jump-gru-0",
          "report": "scan_report"}


def _stage(name: str):
    return stage_main(f"scan/{name}")


def test_both_profiles_validate():
    default = load_params(ROOT / "params.yaml").scan
    paper = validate(compose(yaml.safe_load((ROOT / "params.yaml").read_text()),
                             yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text()))).scan
    assert {"gru", "lstm"} <= set(default.grid.cells) and len(default.grid.seeds) >= 2
    assert set(default.grid.splits) == {"add_jump", "around_right"}
    assert paper.grid.cells == ["rnn", "gru", "lstm"] and paper.grid.seeds == [0, 1, 2]
    assert paper.pretrain.examples == 200_000 and paper.pretrain.batch_size == 1
    assert paper.tune.steps == 10_000 and paper.tune.lr == {"add_jump": 2e-5, "around_right": 5e-5}


def _write_params(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data["scan"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD = {
    "unknown_cell": (lambda s: s["grid"].update(cells=["gru", "transformer"]), "grid.cells"),
    "unknown_split": (lambda s: s["grid"].update(splits=["add_jump", "length"]), "grid.splits"),
    "empty_seeds": (lambda s: s["grid"].update(seeds=[]), "grid.seeds"),
    "word_not_in_vocabulary": (lambda s: s["groups"].update(add_jump={"cycles": [["jump", "hop"]],
                                                                      "output_cycles": [["JUMP", "RUN"]]}), "hop"),
    "image_group": (lambda s: s["groups"].update(add_jump="c4"), "word-cycle"),
    "missing_output_cycles": (lambda s: s["groups"].update(add_jump={"cycles": [["jump", "run"]]}), "output_cycles"),
    "typo_key": (lambda s: s["pretrain"].update(exampels=5), "exampels"),
    "curve_without_final_step": (lambda s: s["tune"].update(curve_steps=[0, 50]), "curve_steps"),
    "unknown_lr_schedule": (lambda s: s["pretrain"].update(lr_schedule="linear"), "lr_schedule"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("stage", ["prepare", "pretrain", "tune", "report"])
def test_bad_params_exit_2_before_any_output(case, stage, tmp_path, monkeypatch, capsys):
    edit, expected = BAD[case]
    params = _write_params(tmp_path, edit)
    monkeypatch.chdir(tmp_path)
    argv = [*stage_argv(STAGES[stage]), "--params", str(params)]
    with pytest.raises(SystemExit) as exit_info:
        run_stage(_stage(stage), argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("argument, value", [("--cell", "rnn"), ("--split", "around_left"), ("--seed", "7")])
def test_matrix_arguments_must_be_in_the_grid(argument, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*stage_argv(STAGES["pretrain"], **{argument.removeprefix("--"): value}),
            "--params", str(ROOT / "params.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        run_stage(_stage("pretrain"), argv)
    assert exit_info.value.code == 2
    assert "not in the params grid" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_official_source_offline_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import equitune.scan.data as scan_data

    def offline(url, timeout):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(scan_data, "_urllib_fetch", offline)
    params = _write_params(tmp_path, lambda s: s["data"].update(source="official"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(_stage("prepare"), [*stage_argv(STAGES["prepare"]), "--params", str(params)])
    assert exit_info.value.code == 2
    assert "source: generate" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
