"""The scan params section: both profiles validate; bad values exit 2 before any output is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from equitune.params import compose, load_params, validate
from equitune.pipeline.stage import run_stage
from helpers.paths import ROOT, stage_argv, stage_main

STAGES = {"prepare": "scan_prepare", "pretrain": "scan_pretrain@add_jump-lstm-0",
          "tune": "scan_tune_add_jump@verbs-lstm-0", "report": "scan_report"}


def _stage(name: str):
    return stage_main(f"scan/{name}")


def test_both_profiles_validate():
    default = load_params(ROOT / "params.yaml").scan
    paper = validate(compose(yaml.safe_load((ROOT / "params.yaml").read_text()),
                             yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text()))).scan
    assert "lstm" in default.grid.rnns and default.grid.seeds == [0, 1, 2]
    assert set(default.grid.splits) == {"add_jump", "around_right"}
    assert default.grid.groups.add_jump == ["jump_run", "verbs"] and default.model.attention == "after_rnn"
    assert paper.grid.rnns == ["rnn", "gru", "lstm"] and paper.grid.seeds == [0, 1, 2]
    assert paper.grid.groups.add_jump == ["jump_run"] and paper.grid.groups.around_right == ["left_right"]
    # The reference's arrangement: attention fed into the RNN, packed encoder, teacher forcing 0.5, batch 1.
    assert paper.model.attention == "input_feeding" and paper.model.source_length is None
    assert paper.pretrain.teacher_forcing == 0.5 and paper.pretrain.lr_schedule == "constant"
    assert paper.pretrain.examples == 200_000 and paper.pretrain.batch_size == 1
    assert paper.tune.steps == {"add_jump": 10_000, "around_right": 10_000}
    assert paper.tune.lr == {"add_jump": 2e-5, "around_right": 5e-5} and paper.tune.lr_schedule == "constant"
    # The default's RNN recipe must not reach the paper profile (nor its smoke overlay: 768k examples of batch 1)
    assert default.recipes and paper.recipes == {} and paper.pretrain_for("rnn") == paper.pretrain
    smoke = validate(compose(yaml.safe_load((ROOT / "params.yaml").read_text()),
                             *(yaml.safe_load((ROOT / "profiles" / name).read_text())
                               for name in ("paper.yaml", "paper-smoke.yaml")))).scan
    assert {smoke.pretrain_for(rnn).examples for rnn in smoke.grid.rnns} == {4}


def _write_params(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data["scan"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD = {
    "unknown_rnn": (lambda s: s["grid"].update(rnns=["gru", "transformer"]), "grid.rnns"),
    "unknown_split": (lambda s: s["grid"].update(splits=["add_jump", "length"]), "grid.splits"),
    "empty_seeds": (lambda s: s["grid"].update(seeds=[]), "grid.seeds"),
    "word_not_in_vocabulary": (lambda s: s["groups"].update(jump_run={"cycles": [["jump", "hop"]],
                                                                      "output_cycles": [["JUMP", "RUN"]]}), "hop"),
    "action_not_in_vocabulary": (lambda s: s["groups"]["verbs"].update(
        output_cycles=[["WALK", "LOOK", "RUN", "HOP"]]), "HOP"),
    "image_group": (lambda s: s["groups"].update(jump_run="c4"), "word-cycle"),
    "missing_output_cycles": (lambda s: s["groups"].update(jump_run={"cycles": [["jump", "run"]]}), "output_cycles"),
    "undefined_group_in_grid": (lambda s: s["grid"]["groups"].update(add_jump=["jump_run", "nouns"]), "nouns"),
    "group_for_split_not_in_grid": (lambda s: s["grid"].update(splits=["add_jump"]), "groups.around_right"),
    "unknown_attention": (lambda s: s["model"].update(attention="bahdanau"), "model.attention"),
    "source_length_below_longest_command": (lambda s: s["model"].update(source_length=5), "source_length"),
    "unknown_equizero_proxy": (lambda s: s["tune"].update(equizero_proxy="margin"), "equizero_proxy"),
    "unknown_loss_weighting": (lambda s: s["pretrain"].update(loss_weighting="sequence"), "loss_weighting"),
    "typo_key": (lambda s: s["pretrain"].update(exampels=5), "exampels"),
    "curve_without_final_step": (lambda s: s["tune"].update(curve_steps=[0, 50, 400]), "curve_steps"),
    "unknown_lr_schedule": (lambda s: s["pretrain"].update(lr_schedule="exponential"), "lr_schedule"),
    "unknown_combination": (lambda s: s["tune"].update(combination="max_prob"), "tune.combination"),
    # jump_run's orbit {jump, run} wholly excluded: every command with either word would have an empty frame.
    "frame_excludes_a_whole_orbit": (lambda s: s["tune"]["frame_excluded_words"].update(add_jump=["jump", "run"]),
                                     "tune.frame_excluded_words.add_jump with group 'jump_run'"),
    "frame_excludes_an_unknown_word": (lambda s: s["tune"]["frame_excluded_words"].update(around_right=["rihgt"]),
                                       "rihgt"),
    "recipe_unknown_key": (lambda s: s.update(recipes={"rnn": {"pretrain": {"exampels": 5}}}),
                           "recipes.rnn.pretrain: exampels"),
    "recipe_bad_value": (lambda s: s.update(recipes={"gru": {"model": {"hidden_size": 0}}}),
                         "recipes.gru.model: hidden_size"),
    "recipe_unknown_rnn": (lambda s: s.update(recipes={"transformer": {}}), "recipes.transformer"),
    "frame_words_missing_a_split": (lambda s: s["tune"].update(frame_excluded_words={"add_jump": ["jump"]}),
                                    "tune.frame_excluded_words"),
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


@pytest.mark.parametrize("stage, argument, value", [
    ("pretrain", "--rnn", "rnn"), ("pretrain", "--split", "around_left"), ("pretrain", "--seed", "7"),
    ("tune", "--group", "left_right"), ("tune", "--group", "nouns"), ("tune", "--seed", "7")])
def test_matrix_arguments_must_be_in_the_grid(stage, argument, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*stage_argv(STAGES[stage], **{argument.removeprefix("--"): value}),
            "--params", str(ROOT / "params.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        run_stage(_stage(stage), argv)
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


def test_tune_stages_list_every_tune_setting_a_cell_reads():
    """Each tune stage lists scan.tune key by key (so that the other split's learning rate is not among its
    params); a setting added to the schema must be added there too, or DVC would not rerun on its change."""
    from equitune.scan.config import SPLIT_NAMES, ScanTune

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for split in SPLIT_NAMES:
        listed = {key for key in stages[f"scan_tune_{split}"]["params"] if key.startswith("scan.tune.")}
        per_split = {"lr", "steps", "frame_excluded_words"}
        expected = ({f"scan.tune.{field}" for field in ScanTune.model_fields if field not in per_split}
                    | {f"scan.tune.{field}.{split}" for field in per_split})
        assert listed == expected, split
        assert "scan.grid" not in stages[f"scan_tune_{split}"]["params"]
    assert "scan.grid" not in stages["scan_pretrain"]["params"] and "scan.grid" in stages["scan_report"]["params"]


def test_a_recipe_replaces_only_its_own_keys_for_its_own_kind():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["scan"]["recipes"] = {"rnn": {"model": {"dropout": 0.0}, "pretrain": {"examples": 1_000, "lr": 0.01}}}
    scan = validate(data).scan
    rnn_pretrain, shared = scan.pretrain_for("rnn"), scan.pretrain
    assert (rnn_pretrain.examples, rnn_pretrain.lr) == (1_000, 0.01)
    assert rnn_pretrain.model_dump(exclude={"examples", "lr"}) == shared.model_dump(exclude={"examples", "lr"})
    assert scan.model_for("rnn").dropout == 0.0 and scan.model_for("rnn").hidden_size == scan.model.hidden_size
    assert scan.pretrain_for("lstm") == shared and scan.model_for("gru") == scan.model


def test_recipes_are_params_of_every_stage_that_builds_a_model():
    """A recipe changes a kind's model or its pretraining: DVC must rerun the stages that build or read them."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("scan_pretrain", "scan_tune_add_jump", "scan_tune_around_right", "scan_report"):
        assert "scan.recipes" in stages[name]["params"], name


def test_max_commands_keeps_the_first_lines_of_validation_and_test_and_all_of_train(tmp_path):
    from equitune.scan.splits import load_split_files

    folder = tmp_path / "split"
    folder.mkdir()
    lines = {part: ["IN: walk OUT: I_WALK\n", "IN: run OUT: I_RUN\n", "IN: look twice OUT: I_LOOK I_LOOK\n"]
             for part in ("train", "validation", "test")}
    for part, text in lines.items():
        (folder / f"{part}.txt").write_text("".join(text))
    every = load_split_files(folder)
    first = load_split_files(folder, max_commands=2)
    assert [len(every[p]) for p in ("train", "validation", "test")] == [3, 3, 3]
    assert [len(first[p]) for p in ("train", "validation", "test")] == [3, 2, 2]
    assert first["test"].target_lists == every["test"].target_lists[:2]
