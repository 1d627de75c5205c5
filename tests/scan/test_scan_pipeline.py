"""End to end on a tiny profile: prepare -> pretrain -> tune -> report, twice, in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from equitune.pipeline.stage import run_stage
from helpers.paths import ROOT, stage_argv, stage_main


@pytest.mark.slow
def test_tiny_pipeline_runs_and_is_deterministic(tmp_path, monkeypatch):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    scan = data["scan"]
    scan["grid"] = {"splits": ["add_jump"], "cells": ["gru"], "seeds": [0]}
    scan["model"]["hidden_size"] = 16
    scan["pretrain"].update(examples=256, batch_size=64, validate_every_examples=128)
    scan["tune"].update(steps=2, batch_size=16, curve_steps=[0, 1, 2])
    scan["evaluate"]["max_output_length"] = 49
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    results = []
    for _ in range(2):
        for stage in ("scan_prepare", "scan_pretrain@add_jump-gru-0", "scan_tune@add_jump-gru-0"):
            script = stage.split("@")[0].removeprefix("scan_")
            run_stage(stage_main(f"scan/{script}"), [*stage_argv(stage), "--params", str(params)])
        results.append(json.loads(Path("metrics/scan/add_jump-gru-0.json").read_text()))
    assert results[0] == results[1]
    metrics = results[0]
    assert set(metrics) >= {"pretrained", "equitune_0_steps", "equitune", "equizero_0_steps", "equizero", "curve"}
    assert metrics["equitune_equivariance_error"] < 1e-10 < metrics["pretrained_equivariance_error"]
    assert metrics["equitune_decoding_equivariance_fraction"] == 1.0
    assert set(metrics["curve"]["equitune"]) == {f"step_{s}_test_accuracy" for s in (0, 1, 2)}
    assert metrics["equitune"]["test_accuracy"] == metrics["curve"]["equitune"]["step_2_test_accuracy"]
    run_stage(stage_main("scan/report"), [*stage_argv("scan_report"), "--params", str(params)])
    section = Path("reports/scan.md").read_text()
    assert section.startswith("## ") and "| add_jump | gru |" in section
    assert Path("reports/figures/scan/curve_add_jump.png").stat().st_size > 1000
