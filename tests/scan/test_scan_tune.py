"""A tuning cell: the configured equizero proxy is the one used both to train and to decode (one registry)."""

from __future__ import annotations

import pytest
import torch
import yaml

from equitune.core import proxies
from equitune.scan.cells import TuneCell
from equitune.scan.config import ScanParams
from equitune.scan.data import generate_split
from equitune.scan.experiment import build_model, tune_cell
from equitune.scan.training import encode_pairs
from helpers.paths import ROOT


def _tiny_params(proxy: str) -> ScanParams:
    scan = yaml.safe_load((ROOT / "params.yaml").read_text())["scan"]
    scan["model"].update(hidden_size=8)
    scan["tune"].update(steps={"add_jump": 1, "around_right": 1}, batch_size=4, curve_steps=[0, 1], equizero_proxy=proxy)
    scan["evaluation"].update(max_output_length=49)
    return ScanParams.model_validate(scan)


@pytest.mark.parametrize("chosen", ["entropy", "max_prob", "max_log_prob"])
def test_equizero_uses_the_configured_proxy_in_tuning_and_in_decoding(chosen, monkeypatch):
    calls: dict[str, list[int]] = {name: [] for name in proxies.PROXIES}
    for name, function in list(proxies.PROXIES.items()):
        def spy(scores, name=name, function=function):
            calls[name].append(scores.dim())
            return function(scores)
        monkeypatch.setitem(proxies.PROXIES, name, spy)
    params = _tiny_params(chosen)
    pairs = list(generate_split("add_jump").test[::900])
    data = {part: encode_pairs(pairs) for part in ("train", "validation", "test")}
    torch.manual_seed(0)
    model = build_model(params, "lstm").eval()
    metrics = tune_cell(params, TuneCell("add_jump", "jump_run", "lstm", 0), data, model,
                        lambda: torch.Generator().manual_seed(0), torch.device("cpu"), lambda values, step: None)
    assert set(metrics) >= {"equizero", "equizero_0_steps"}
    # Tuning scores the teacher-forced outputs [|G|, B, T, V]; decoding scores each step's [rows, V].
    assert 4 in calls[chosen] and 2 in calls[chosen]
    assert all(not used for name, used in calls.items() if name != chosen)
