"""Comparing runs as a researcher would, in a real browser, on a store written by a tiny DVC pipeline.

The toy project (tests/helpers/toy_project.py) runs `dvc repro` (seed 0) and one `dvc exp run` (seed 1): two runs
of its training stage, each with a per-epoch curve (a DVC plots file), a figure artifact and its checkpoint's DVC
hash. Then `python -m equitune.pipeline.ui` (what `make ui` runs) serves the store, and headless Chromium walks the
README's path: home, the "Model training" switch, Experiments, the experiment (its runs table, not the GenAI
overview), Views > Cells (the cell's tags as columns), tick both runs, Compare (the test accuracy differs), back,
open a run (the model-training layout, its description; the curve "loss" one key with the epochs as steps, and
its chart), Artifacts, the figure. On failure, a screenshot and the page's HTML are saved under the test's
tmp_path (the path is in the failure message).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from equitune.pipeline.services import free_port
from helpers.browser import chromium, missing_browser, save_page
from helpers.toy_project import clean_env, make_toy_project, mlflow_runs, run

pytestmark = pytest.mark.slow
WAIT_S = 90  # page loads on a busy 2-core machine


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """The toy project after `dvc repro` (seed 0, committed) and `dvc exp run -S toy.seed=1 -n seed1`."""
    root = make_toy_project(tmp_path_factory.mktemp("ui") / "toy", seed=0, epochs=3)
    env = clean_env()
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "seed 0 results"], root, env)
    run(["dvc", "exp", "run", "-S", "toy.seed=1", "-n", "seed1"], root, env)
    return root


def test_stage_writes_its_curve_figure_and_checkpoint_hash(toy):
    runs = mlflow_runs(toy / "mlflow.db")
    assert [r.data.tags["seed"] for r in runs] == ["0", "1"]
    # The checkpoint is referenced by the md5 that dvc.lock records for it (the workspace holds seed 1's).
    lock = {out["path"]: out["md5"] for out in
            yaml.safe_load((toy / "dvc.lock").read_text())["stages"]["train"]["outs"]}
    assert runs[1].data.tags["checkpoint.path"] == "outputs/model.ckpt"
    assert runs[1].data.tags["checkpoint.dvc_md5"] == lock["outputs/model.ckpt"]
    # The curve file holds what MLflow's history holds; both the curve and the figure are artifacts.
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{toy / 'mlflow.db'}")
    history = {m.step: m.value for m in client.get_metric_history(runs[1].info.run_id, "loss")}
    rows = (toy / "plots" / "toy" / "train.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss"
    assert {int(e): float(v) for e, v in (row.split(",") for row in rows[1:])} == history
    artifacts = {a.path for a in client.list_artifacts(runs[1].info.run_id, "figures")} | {
        a.path for a in client.list_artifacts(runs[1].info.run_id, "curves")}
    assert artifacts == {"figures/loss.png", "curves/train.csv"}


def test_dvc_plots_diff_compares_two_experiments(toy):
    shown = json.loads(run(["dvc", "plots", "diff", "HEAD", "seed1", "--json"], toy).stdout)
    assert not shown.get("errors"), shown.get("errors")
    (plot,) = shown["data"]["plots/toy/train.csv"]
    content = plot["content"]
    values = content["data"]["values"]
    assert plot["revisions"] == ["HEAD", "seed1"]
    # Declared axes: epoch against the training loss, one line per experiment.
    assert content["encoding"]["x"]["field"] == "epoch" and content["encoding"]["x"]["title"] == "epoch"
    losses = {rev: [float(v["loss"]) for v in values if v["rev"] == rev] for rev in ("HEAD", "seed1")}
    assert len(losses["HEAD"]) == len(losses["seed1"]) == 3
    assert all(b - a == pytest.approx(1e-3) for a, b in zip(losses["HEAD"], losses["seed1"], strict=True))


class _Launcher:
    """`python -m equitune.pipeline.ui` in the background, its output collected line by line."""

    def __init__(self, root: Path, port: int):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "equitune.pipeline.ui", "--port", str(port)], cwd=root,
            env=clean_env(DVC_ROOT=str(root)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def wait_for_links(self, timeout: float = 240) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            links = [line for line in self.lines if "/runs?" in line]
            if links:
                return links
            assert self.process.poll() is None, f"the ui launcher exited early:\n{''.join(self.lines)}"
            time.sleep(0.5)
        raise AssertionError(f"no links within {timeout:.0f} s:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def test_a_researcher_compares_runs_in_the_mlflow_ui(toy, tmp_path):
    why = missing_browser()
    if why:
        pytest.fail(why)
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    launcher = _Launcher(toy, port)
    try:
        links = launcher.wait_for_links()
        (toy_link,) = [re.search(r"http://\S+", line).group(0) for line in links if "equitune-toy" in line]
        with chromium() as driver:
            # React re-renders: an element found a moment ago may be gone; the waits look again.
            wait = WebDriverWait(driver, WAIT_S,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
            step = "start"

            def click(how, what):
                element = wait.until(seen.element_to_be_clickable((how, what)))
                element.click()
                return element

            try:
                step = "home page, switch to model training, the experiment list"
                driver.get(f"http://127.0.0.1:{port}/")
                click(By.XPATH, "//*[normalize-space()='Model training']")
                click(By.XPATH, "//a[normalize-space()='Experiments']")
                step = "open the experiment: its runs table and description, not the GenAI overview"
                click(By.LINK_TEXT, "equitune-toy")
                wait.until(seen.url_contains("/runs"))
                wait.until(seen.visibility_of_element_located(
                    (By.XPATH, "//*[contains(normalize-space(), 'Runs of the')]")))
                step = "Views > Cells: the cell's tags as columns"
                click(By.XPATH, "//button[normalize-space()='Views']")
                click(By.XPATH, "//*[normalize-space(text())='Cells']")
                for tag in ("model", "method", "group", "seed"):
                    wait.until(seen.visibility_of_element_located(
                        (By.XPATH, f"//*[@role='columnheader'][normalize-space()='{tag}']")))
                seeds = wait.until(lambda d: sorted(
                    c.text for c in d.find_elements(By.XPATH, "//*[@role='gridcell'][@col-id='tags.`seed`']")
                    if c.text) or None)
                assert seeds == ["0", "1"], seeds
                step = "tick both runs and compare: the test accuracy differs"
                boxes = "//input[starts-with(@aria-label, 'Press Space to toggle row selection')]"
                for index in (1, 2):  # the table re-renders after each tick: find the box again
                    # (a styled checkbox: its input is not "displayed" for selenium's waits, but takes the click)
                    wait.until(seen.presence_of_element_located((By.XPATH, f"({boxes})[{index}]"))).click()
                    wait.until(lambda d, n=index: len([b for b in d.find_elements(By.XPATH, boxes) if b.is_selected()]) == n)
                click(By.XPATH, "//button[normalize-space()='Compare']")
                wait.until(seen.url_contains("compare-runs"))
                assert sorted(_compare_metric(driver, wait, "test/accuracy")) == ["0.5", "0.501"]
                step = "open one run: the model-training layout, its description rendered"
                driver.back()
                click(By.LINK_TEXT, "train")
                # The experiment link of the run page's breadcrumb: .../runs in the training view, .../evaluation-runs
                # in the GenAI one.
                crumb = wait.until(seen.presence_of_element_located(
                    (By.CSS_SELECTOR, "a[data-testid='experiment-runs-link']")))
                assert crumb.get_attribute("href").endswith("/runs"), crumb.get_attribute("href")
                wait.until(seen.presence_of_element_located(
                    (By.XPATH, "//*[@data-testid='note-editor-preview-content']//code[normalize-space()='train']")))
                run_page = driver.current_url
                step = "the curve: one metric key, its epochs as steps (what the run's chart reads)"
                run_id = re.search(r"/runs/([0-9a-f]{32})", run_page).group(1)
                driver.get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/metrics/get-history"
                           f"?run_id={run_id}&metric_key=loss")
                history = json.loads(driver.find_element(By.TAG_NAME, "body").text)["metrics"]
                assert sorted(m["step"] for m in history) == [0, 1, 2], history  # the final loss: not logged again
                driver.get(run_page)
                click(By.XPATH, "//*[@role='tab'][normalize-space()='Model metrics']")
                wait.until(seen.visibility_of_element_located((By.XPATH, "//h4[@title='loss']")))  # its chart card
                step = "the run's figure artifact"
                click(By.XPATH, "//*[@role='tab' or self::button or self::a][normalize-space()='Artifacts']")
                click(By.CSS_SELECTOR, "[data-testid='artifact-tree-node'][artifact-name='figures']")
                click(By.CSS_SELECTOR, "[data-testid='artifact-tree-node'][artifact-name='loss.png']")
                width = wait.until(lambda d: max((d.execute_script("return arguments[0].naturalWidth", img)
                                                  for img in d.find_elements(By.CSS_SELECTOR, "img[src^='blob:']")),
                                                 default=0) or None)
                assert width == 400  # the toy figure: 4 in at 100 dpi
                step = "the link `make ui` printed: straight to the runs table with the Cells view"
                driver.get(toy_link)
                wait.until(seen.visibility_of_element_located(
                    (By.XPATH, "//*[@role='columnheader'][normalize-space()='seed']")))
                assert "/runs" in driver.current_url
            except Exception as error:
                saved = save_page(driver, tmp_path / "screenshots", "failure")
                raise AssertionError(f"at step '{step}': {error!r}; screenshot and page: {saved}") from error
    finally:
        code = launcher.stop()
    assert code == 0, "".join(launcher.lines)
    assert "equitune-toy" in "".join(launcher.lines)


def _compare_metric(driver, wait, name: str) -> list[str]:
    """The values of metric ``name`` in the compare page's Metrics table, one per run (a virtualised grid: the
    names in one grid, the values in the next, rows aligned by their offset from the top)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen

    link = wait.until(seen.visibility_of_element_located(
        (By.XPATH, f"//a[@title='Plot chart'][normalize-space()='{name}']")))
    cell = link.find_element(By.XPATH, "./..")
    top = cell.value_of_css_property("top")
    section = cell.find_element(By.XPATH, "ancestor::div[contains(@class, 'collapse-content-box')][1]")
    values_grid = section.find_elements(By.XPATH, ".//div[@role='grid']")[1]
    return [c.text for c in values_grid.find_elements(By.XPATH, f"./div/div[contains(@style, 'top: {top}')]")]
