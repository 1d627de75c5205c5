"""The protocol of the SCAN experiment (issue 27, item 2): checkpoint selection in pretraining and every choice of
tuning read the training and validation parts only. Given a poisoned test split (other commands, targets that
belong to no command), pretrain_cell keeps the same checkpoint at the same point and tune_cell ends with the same
tuned weights and validation curves; only the test numbers change."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from equitune.scan import experiment, training
from equitune.scan.cells import ScanCell, TuneCell
from equitune.scan.config import ScanParams
from equitune.scan.data import generate_split
from equitune.scan.experiment import build_model, pretrain_cell, tune_cell
from equitune.scan.training import EncodedPairs, encode_pairs
from helpers.paths import ROOT


def _tiny_params() -> ScanParams:
    scan = yaml.safe_load((ROOT / "params.yaml").read_text())["scan"]
    scan["model"].update(hidden_size=8)
    scan["pretrain"].update(examples=48, batch_size=8, validate_every_examples=16)
    scan["tune"].update(steps={"add_jump": 3, "around_right": 3}, batch_size=4, curve_steps=[0, 2, 3])
    scan["evaluation"].update(max_output_length=49, batch_size=16)
    return ScanParams.model_validate(scan)


def _data() -> dict[str, EncodedPairs]:
    split = generate_split("add_jump")
    return {"train": encode_pairs(split.train[::400]), "validation": encode_pairs(split.train[7::500]),
            "test": encode_pairs(split.test[::600])}


def _poisoned(data: dict[str, EncodedPairs]) -> dict[str, EncodedPairs]:
    """The test part replaced: other commands (training lines), each with another command's target reversed."""
    other = generate_split("add_jump").train[3::700]
    targets = [pair[1] for pair in other[1:] + other[:1]]
    return {**data, "test": encode_pairs([(command, " ".join(reversed(target.split())))
                                          for (command, _), target in zip(other, targets, strict=True)])}


def _pretrain(params: ScanParams, data: dict[str, EncodedPairs]) -> tuple[dict, dict]:
    torch.manual_seed(0)
    return pretrain_cell(params, ScanCell("add_jump", "lstm", 0), data, torch.Generator().manual_seed(0),
                         torch.device("cpu"), lambda values, step: None)


def test_the_poisoned_test_split_differs_from_the_real_one():
    data = _data()
    poisoned = _poisoned(data)
    assert len(poisoned["test"]) and poisoned["test"].target_lists != data["test"].target_lists
    assert poisoned["test"].src.tolist() != data["test"].src.tolist()


def test_pretraining_selects_the_same_checkpoint_with_a_poisoned_test_split():
    params, data = _tiny_params(), _data()
    checkpoint, metrics = _pretrain(params, data)
    again, poisoned_metrics = _pretrain(params, _poisoned(data))
    assert len(metrics["history"]) == 3  # three validations: the selection had a choice to make
    assert poisoned_metrics["best_at_examples"] == metrics["best_at_examples"]
    assert poisoned_metrics["history"] == metrics["history"]
    assert poisoned_metrics["validation_accuracy"] == metrics["validation_accuracy"]
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


def _tuned(params: ScanParams, data: dict[str, EncodedPairs], monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    """tune_cell's metrics and each tuning run's final weights (captured where tune_cell calls ``tune``)."""
    finals: list[dict[str, torch.Tensor]] = []

    def recording_tune(wrapper, *args, **kwargs):
        training.tune(wrapper, *args, **kwargs)
        finals.append(copy.deepcopy(wrapper.state_dict()))

    monkeypatch.setattr(experiment, "tune", recording_tune)
    torch.manual_seed(0)
    pretrained = build_model(params, "lstm").eval()

    def seed_generator() -> torch.Generator:
        torch.manual_seed(0)
        return torch.Generator().manual_seed(0)

    metrics = tune_cell(params, TuneCell("add_jump", "jump_run", "lstm", 0), data, pretrained, seed_generator,
                        torch.device("cpu"), lambda values, step: None)
    return metrics, finals


def test_tuning_ends_with_the_same_weights_with_a_poisoned_test_split(monkeypatch):
    params, data = _tiny_params(), _data()
    metrics, finals = _tuned(params, data, monkeypatch)
    poisoned_metrics, poisoned_finals = _tuned(params, _poisoned(data), monkeypatch)
    assert len(finals) == len(poisoned_finals) >= 2  # equitune, equizero (and any other tuned method)
    for state, again in zip(finals, poisoned_finals, strict=True):
        assert state.keys() == again.keys()
        for key, value in state.items():
            assert torch.equal(value, again[key]), key
    assert poisoned_metrics["validation_curve"] == metrics["validation_curve"]
    # the test numbers did read the poisoned part: the check above compares runs that saw different test data
    assert poisoned_metrics["curve"] != metrics["curve"] or poisoned_metrics["frame_mean_size"] != metrics[
        "frame_mean_size"]
