"""scripts/screenshot_ui.py: the README's MLflow UI screenshot, made from a store and never writing to it.

A tiny store is built with MLflow's own API: an experiment named like the pipeline's SCAN experiment with three
runs carrying the cell's tags and the Cells view's metrics, and an empty experiment. The slow test takes the
screenshot in headless Chromium and checks the picture (its size, that it is not blank), the run names the page
showed, and that the store's folder is byte for byte what it was. The fast tests call the script's ``main`` for
its errors: an unknown experiment, an experiment without runs, a store that does not exist, a missing Chromium.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import ROOT, load_script

SCRIPT = ROOT / "scripts" / "screenshot_ui.py"
RUNS = {  # run name -> (cell tags, final metrics), as a SCAN pretrain stage and two tune stages log them
    "scan_pretrain@add_jump-lstm-0": ({"split": "add_jump", "model": "seq2seq-lstm", "method": "pretrain",
                                       "group": "trivial", "seed": "0"},
                                      {"test_accuracy": 0.0123, "validation_accuracy": 0.9876}),
    "scan_tune_add_jump@verbs-lstm-0": ({"split": "add_jump", "model": "seq2seq-lstm", "method": "equitune",
                                         "group": "verbs", "seed": "0"},
                                        {"equitune/test_accuracy": 0.9612, "equizero/test_accuracy": 0.9543}),
    "scan_tune_add_jump@verbs-lstm-1": ({"split": "add_jump", "model": "seq2seq-lstm", "method": "equitune",
                                         "group": "verbs", "seed": "1"},
                                        {"equitune/test_accuracy": 0.9734, "equizero/test_accuracy": 0.9655}),
}


def _load_script():
    """The script as a module (scripts are not a package), for its ``main`` and its constants."""
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A folder with mlflow.db: equitune-scan with the three runs of RUNS, and equitune-nlg without runs."""
    import mlflow

    folder = tmp_path_factory.mktemp("store")
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    scan = client.create_experiment("equitune-scan", artifact_location=(folder / "mlartifacts").as_uri())
    client.create_experiment("equitune-nlg", artifact_location=(folder / "mlartifacts").as_uri())
    for name, (tags, metrics) in RUNS.items():
        run = client.create_run(scan, run_name=name, tags={"task": "scan", **tags})
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    return folder


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its md5 and modification time."""
    return {str(path.relative_to(folder)): (hashlib.md5(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _main(capsys, *argv: str) -> tuple[int, str]:
    """The script's exit code and its stderr."""
    code = _load_script().main(list(argv))
    return code, capsys.readouterr().err


def test_an_unknown_experiment_is_refused_with_the_store_s_experiments(store, capsys, tmp_path):
    before = _fingerprint(store)
    code, err = _main(capsys, "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", "--experiment", "equitune-mnist",
                      "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "no experiment 'equitune-mnist'" in err
    assert "equitune-scan (3 runs)" in err and "equitune-nlg (0 runs)" in err
    assert not (tmp_path / "x.png").exists()
    assert _fingerprint(store) == before


def test_an_experiment_without_runs_is_refused(store, capsys, tmp_path):
    code, err = _main(capsys, "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", "--experiment", "nlg",
                      "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert "experiment 'equitune-nlg'" in err and "has no runs" in err and "equitune-scan (3 runs)" in err


def test_a_missing_store_is_refused_and_not_created(capsys, tmp_path):
    code, err = _main(capsys, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert "no MLflow store at" in err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_chromium_is_named(store, capsys, tmp_path, monkeypatch):
    script = _load_script()
    monkeypatch.setattr(script, "CHROMIUM", tmp_path / "no-chromium")
    code = script.main(["--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path / 'no-chromium'} not found" in err and "chromium-driver" in err


@pytest.mark.slow
def test_the_screenshot_shows_the_runs_table_and_leaves_the_store_alone(store, tmp_path):
    from PIL import Image

    script = _load_script()
    if (why := script.missing_browser()) is not None:
        pytest.fail(why)
    before = _fingerprint(store)
    out, page_text = tmp_path / "x.png", tmp_path / "page.txt"
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", "--out", str(out),
         "--size", "1600x1000", "--page-text", str(page_text)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _fingerprint(store) == before, "the screenshot wrote to the store's folder"

    image = Image.open(out)
    assert image.format == "PNG" and image.size == (1600, 1000)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, f"a nearly blank picture: {len(colours)} colours"

    # The page showed every run, newest first, and the Cells view's columns with a logged value.
    shown = [line.removeprefix("run: ") for line in result.stdout.splitlines() if line.startswith("run: ")]
    assert shown == list(reversed(RUNS)), result.stdout
    assert "3 of 3 runs in view" in result.stdout
    text = page_text.read_text()
    for column in ("split", "seed", "test_accuracy", "validation_accuracy", "equitune/test_accuracy",
                   "equizero/test_accuracy"):
        assert column in text.splitlines(), f"no {column!r} column on the page"
    assert "0.9734" in text
    assert "Ask questions about" not in text, "the MLflow Assistant panel covers the table"
