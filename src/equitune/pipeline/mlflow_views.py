"""How the MLflow UI shows this project's experiments: a description, the "Cells" view, and links to the runs table.

What MLflow 3.17 does, read from its UI source and checked in a browser (tests/scripts/test_mlflow_browser.py):

- An experiment opens on the GenAI "Overview" page (traces, latency, tokens) unless the UI's *workflow type* is
  "machine learning". That is one setting for the whole UI: the sidebar switch "GenAI | Model training" (kept in
  the browser's local storage), or ``?workflowType=machine_learning`` in the URL. The experiment tag
  ``mlflow.experimentKind`` is not read by this version (a built-in feature flag ties the experiment kind to the
  workflow type); it is still set here for the MLflow versions that read it.
- The runs table shows run name, date, duration and source; tags, params and metrics appear only as columns a user
  picks, or through a *saved view*: an experiment tag ``mlflow.sharedViewState.<id>`` whose value is
  ``{"name", "createdAt", "updatedAt", "state"}`` with ``state`` the JSON of the table's settings. It appears under
  the runs table's "Views" menu and opens directly at ``#/experiments/<id>/runs?viewStateShareKey=<id>``.
- The experiment's description is the tag ``mlflow.note.content`` (markdown), shown above the runs table.

The pipeline writes these tags when it creates or opens an experiment (``tracking.ensure_store``); they belong to
the project and are rewritten when they differ (a user's own views, saved under other ids, are left alone).

The saved-view tag and its state are the UI's private format, not an API: an MLflow upgrade can stop reading them
without an error anywhere. They are kept (the Cells view is what makes the runs table readable) and pinned to
:data:`UI_VERSION`, the MLflow whose UI they were checked against: tests/pipeline/test_mlflow_views.py fails when
another MLflow is installed, or when the installed UI's code lacks the tag prefix, the share-key parameter or a key
of the state written here (a fast read of its JavaScript bundle); the browser test above is the full check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["UI_VERSION", "VIEW_ID", "ExperimentView", "experiment_tags", "runs_table_url", "saved_view_state", "view_for"]

UI_VERSION = "3.17.2"
"""The MLflow whose UI was checked, in a browser, to show the views written here (tests/scripts/test_mlflow_browser.py)."""
VIEW_ID = "cells"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""The UI's prefix of a saved view's experiment tag; the view's id follows it."""
VIEW_TAG = VIEW_TAG_PREFIX + VIEW_ID
SHARE_KEY_PARAM = "viewStateShareKey"
"""The runs-table URL parameter that opens a saved view by its id."""
DESCRIPTION_TAG = "mlflow.note.content"
KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"
FIXED_COLUMNS = ("1", "attributes.`Run Name`", "runDateAndNestInfo", "duration")


@dataclass(frozen=True)
class ExperimentView:
    """What one experiment's runs table should show: its description and the columns of its "Cells" view."""

    description: str
    tags: tuple[str, ...]
    """Run tags shown as columns: the cell's identity (tracked_run logs them as short params too)."""
    metrics: tuple[str, ...] = ()
    """Final metrics shown as columns: keys of the experiment's DVC metrics files, nested keys joined by '/'."""


_COMMON = ("One run per DVC stage, named by its cell (the stage's full name is the tag `dvc.stage` and the run's "
           "description); DVC's metrics files are the source of truth and MLflow is a view of them: each final "
           "metric under its key in the metrics file, each curve one metric whose steps are the curve's steps. "
           "Open **Views > Cells** for the cell's identity and the final metrics as columns.")

VIEWS: dict[str, ExperimentView] = {
    "scan": ExperimentView(
        description=("**SCAN compositional generalisation** (paper section 3.2). A run named `<split>-<cell>-<seed>` "
                     "(stage `scan_pretrain`) trains the non-equivariant seq2seq model (curve: validation exact match against training "
                     "examples; checkpoint by DVC hash in the tag `checkpoint.dvc_md5`); a run named "
                     "`<split>-<group>-<cell>-<seed>` (stage `scan_tune_<split>`) evaluates the zero-shot equituned and equizero models, then equitunes and equizero-tunes it (curve: test exact match against "
                     "tuning steps). " + _COMMON),
        tags=("split", "model", "method", "group", "seed"),
        metrics=("test_accuracy", "validation_accuracy", "equitune/test_accuracy", "equizero/test_accuracy")),
    "images": ExperimentView(
        description=("**Image classification under rotations** (paper section 3.1). `images_cache@<dataset>-<backbone>` "
                     "runs the frozen lower units once on every image moved by each element of D4; "
                     "`images_tune_*@<cell>` fine-tunes the top units of one backbone with one method on that cache, or "
                     "(method `gcnn`) trains a steerable G-CNN from scratch on the images "
                     "(curve: training loss and validation accuracy per epoch; checkpoint by DVC hash in "
                     "`checkpoint.dvc_md5`) and measures upright, rotated and mirrored test accuracy, its inference cost "
                     "(`inference/*`) and training seconds; a `finetune` run also holds the metrics of its classifier "
                     "averaged over each group at test time only (`posthoc_equitune/<group>/...`); `images_features` and `images_report` log their figures "
                     "as artifacts. " + _COMMON),
        tags=("dataset", "model", "method", "group", "seed"),
        metrics=("test_accuracy_upright", "test_accuracy_random/c4", "test_accuracy_random/d4",
                 # what each cell costs, so the views compare accuracy against cost as the report does
                 "training/seconds", "inference/backbone_calls_per_image", "inference/images_per_second")),
    "nlg": ExperimentView(
        description=("**Fairness in language generation** (paper section 3.3): EquiLM and R-EquiLM against the base "
                     "model. `nlg_generate`, `nlg_score` and `nlg_perplexity` each cover every method and axis; the "
                     "bias gaps (with 95% bootstrap intervals) are negative minus positive label fractions between the "
                     "demographics of an axis, for the LM and the planted-bias control; "
                     "`nlg_report` logs the label figure. " + _COMMON),
        tags=("model", "method", "group"),
        metrics=("lm/base/gender/bias_gap/value", "lm/equilm/gender/bias_gap/value", "lm/r_equilm/gender/bias_gap/value",
                 "control/base/gender/bias_gap/value", "control/equilm/gender/bias_gap/value")),
    "report": ExperimentView(
        description=("**The report**: the `report` stage stitches the experiments' sections into reports/report.md, "
                     "logged as an artifact of its run. " + _COMMON),
        tags=("profile",)),
}


def view_for(task: str) -> ExperimentView:
    """The view of ``task``'s experiment; a task without one (a test's toy task) gets the usual cell columns."""
    return VIEWS.get(task) or ExperimentView(description=f"Runs of the `{task}` stages. " + _COMMON,
                                             tags=("model", "method", "group", "seed"))


def saved_view_state(view: ExperimentView) -> dict[str, Any]:
    """The runs table settings of the "Cells" view, in the shape MLflow 3.17's UI saves (its default settings, with
    the cell's tags and the final metrics as the only optional columns)."""
    metrics = [f"metrics.`{name}`" for name in view.metrics]
    columns = [f"tags.`{name}`" for name in view.tags] + metrics
    # The UI applies widths only to the columns listed in columnOrder, and orders the rest itself (metrics before
    # tags): list the fixed columns (their ids in the 3.17 UI), then the cell's tags, then the metrics, each metric
    # wide enough for a name such as "equitune/test_accuracy".
    order = [*FIXED_COLUMNS, *columns]
    widths = {column: 7 * len(name) + 20 for column, name in zip(metrics, view.metrics, strict=True)}
    return {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": order, "columnWidths": widths, "runsHiddenMode": "FIRST_10_RUNS",
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def _saved_view(view: ExperimentView, created_ms: int) -> str:
    return json.dumps({"name": "Cells", "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(saved_view_state(view), sort_keys=True)}, sort_keys=True)


def experiment_tags(task: str, current: dict[str, str] | None = None) -> dict[str, str]:
    """The project's tags for ``task``'s experiment. ``current`` (the experiment's tags now) keeps the view's
    creation time, so that an unchanged view compares equal and is not rewritten."""
    created = int(time.time() * 1000)
    try:
        created = int(json.loads((current or {})[VIEW_TAG])["createdAt"])
    except (KeyError, TypeError, ValueError):
        pass
    view = view_for(task)
    return {DESCRIPTION_TAG: view.description, KIND_TAG: CUSTOM_MODEL_DEVELOPMENT,
            VIEW_TAG: _saved_view(view, created)}


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table with the "Cells" view, in the model-training mode of the UI."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&{SHARE_KEY_PARAM}={VIEW_ID}")
