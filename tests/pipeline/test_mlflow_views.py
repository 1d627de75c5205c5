"""How the MLflow UI shows the experiments (src/equitune/pipeline/mlflow_views.py) and what runs log as params."""

from __future__ import annotations

import json
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import pytest

from equitune.pipeline import tracking
from equitune.pipeline.mlflow_views import (
    DESCRIPTION_TAG,
    SHARE_KEY_PARAM,
    UI_VERSION,
    VIEW_TAG_PREFIX,
    VIEWS,
    experiment_tags,
    runs_table_url,
    saved_view_state,
    view_for,
)
from helpers.paths import ROOT
from helpers.toy_project import copy_empty_store


def test_the_saved_view_is_what_mlflow_3_17_saves():
    """The envelope and the state keys of a view saved by MLflow 3.17.2's UI (tag value read back from a store),
    with the experiment's tags and metrics as the columns."""
    tags = experiment_tags("scan")
    envelope = json.loads(tags["mlflow.sharedViewState.cells"])
    assert set(envelope) == {"name", "createdAt", "updatedAt", "state"} and envelope["name"] == "Cells"
    state = json.loads(envelope["state"])
    assert state == saved_view_state(VIEWS["scan"])
    assert state["selectedColumns"] == ["tags.`split`", "tags.`model`", "tags.`method`", "tags.`group`",
                                        "tags.`seed`", "metrics.`test_accuracy`", "metrics.`validation_accuracy`",
                                        "metrics.`equitune/test_accuracy`", "metrics.`equizero/test_accuracy`"]
    assert {"searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "datasetsFilter",
            "modelVersionFilter", "columnOrder", "runsHiddenMode", "groupBy", "globalLineChartConfig"} <= set(state)
    assert tags["mlflow.note.content"] == VIEWS["scan"].description
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_images_cells_view_shows_each_cell_s_cost():
    """Accuracy beside what it cost: training seconds, classifier calls per test image, measured images/s (the
    keys run_cell writes under `training` and `inference`, flattened as log_final logs them)."""
    state = saved_view_state(VIEWS["images"])
    cost = ["metrics.`training/seconds`", "metrics.`inference/backbone_calls_per_image`",
            "metrics.`inference/images_per_second`"]
    assert state["selectedColumns"][-3:] == cost and state["columnOrder"][-3:] == cost
    assert set(cost) <= set(state["columnWidths"])


_RECHECK = ("check the views in a browser (pytest tests/scripts/test_mlflow_browser.py, with chromium), fix "
            "src/equitune/pipeline/mlflow_views.py if the UI changed, then set its UI_VERSION")


@pytest.fixture(scope="module")
def ui_bundle() -> str:
    """The JavaScript of the installed MLflow UI (mlflow/server/js/build/static/js/*.js, about 22 MB)."""
    build = Path(find_spec("mlflow").origin).parent / "server" / "js" / "build" / "static" / "js"
    scripts = sorted(build.glob("*.js"))
    assert scripts, f"MLflow {version('mlflow')} ships no UI bundle under {build}; {_RECHECK}"
    return "\n".join(path.read_text(errors="replace") for path in scripts)


def test_the_saved_view_is_pinned_to_the_mlflow_whose_ui_was_checked():
    """The saved-view tag is the UI's private format: another MLflow may ignore it without a word, so an upgrade
    fails here until the views are checked again."""
    assert version("mlflow") == UI_VERSION, (
        f"MLflow {version('mlflow')} is installed, but the Cells view (experiment tag {VIEW_TAG_PREFIX}<id>) was "
        f"checked against the UI of MLflow {UI_VERSION}: {_RECHECK}")


def test_the_installed_ui_reads_the_saved_view_tags(ui_bundle):
    """Every name the views depend on is in the installed UI's code: the tag prefix, the URL parameters of the
    links, the description tag, each key of the saved state, and the id of the UI's date column."""
    needed = [VIEW_TAG_PREFIX, SHARE_KEY_PARAM, "workflowType", "machine_learning", DESCRIPTION_TAG,
              *saved_view_state(VIEWS["scan"]), "runDateAndNestInfo"]
    missing = [name for name in needed if name not in ui_bundle]
    assert not missing, (f"the UI of MLflow {version('mlflow')} no longer contains {missing}: the Cells view or "
                         f"its links would silently stop working; {_RECHECK}")


def test_an_unchanged_view_keeps_its_creation_time():
    first = experiment_tags("images")
    assert experiment_tags("images", first) == first
    assert experiment_tags("images", {"mlflow.sharedViewState.cells": "not json"}).keys() == first.keys()


def test_a_task_without_a_view_gets_the_cell_columns():
    view = view_for("toy")
    assert view.tags == ("model", "method", "group", "seed") and "`toy`" in view.description


def test_links_open_the_runs_table_in_model_training_mode_with_the_view():
    assert runs_table_url("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=cells")


def _flat_keys(data, prefix=""):
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}/")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@pytest.mark.parametrize("task", ["scan", "images", "nlg"])
def test_view_metric_columns_are_keys_of_the_committed_metrics_files(task):
    """A column names a final metric as log_final logs it: a key of the experiment's DVC metrics files. A renamed
    metric would leave an empty column; this fails instead (after the pipeline's results are committed)."""
    keys = set().union(*(_flat_keys(json.loads(path.read_text())) for path in (ROOT / "metrics" / task).rglob("*.json")))
    missing = [name for name in VIEWS[task].metrics if name not in keys]
    assert not missing, f"{task}: view columns that no metrics file has: {missing}"


def test_params_are_the_cell_then_the_settings_without_the_grid():
    settings = {"grid": {"seeds": [0, 1], "cells": ["gru"]}, "threads": 2,
                "model": {"hidden": 64, "layers": [1, 2]}, "seed": 9, "method": None}
    params = tracking.settings_params(settings, {"seed": "1", "method": "equitune"})
    assert params == {"seed": "1", "method": "equitune", "threads": "2", "model/hidden": "64",
                      "model/layers": "[1, 2]", "settings/seed": "9", "settings/method": "None"}


def test_ensure_store_writes_the_views_once(monkeypatch, tmp_path):
    store = copy_empty_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    tracking.ensure_store(("scan", "toy"))
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    scan = client.get_experiment_by_name("equitune-scan")
    assert {k: v for k, v in scan.tags.items() if k.startswith("mlflow.")} == experiment_tags("scan", scan.tags)
    writes = []
    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", lambda self, *args: writes.append(args))
    tracking.ensure_store(("scan", "toy"))
    assert writes == []
    # A description a user edited is the project's again at the next stage.
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    client.set_experiment_tag(scan.experiment_id, "mlflow.note.content", "edited")
    tracking.ensure_store(("scan",))
    assert client.get_experiment(scan.experiment_id).tags["mlflow.note.content"] == VIEWS["scan"].description
