"""docs/mlflow-ui.png, made from the store: one experiment's runs table in the MLflow UI, shot in headless Chromium.

    python scripts/screenshot_ui.py [--experiment equitune-scan] [--out docs/mlflow-ui.png] [--size 1800x1000]
                                    [--tracking-uri sqlite:///mlflow.db] [--page-text FILE]

This script owns the documentation's picture of the UI (docs/mlflow.md). It never writes to the store it shows:
it copies the SQLite file (SQLite's online backup from a read-only connection, so a stage writing at the same time
is no problem) into a temporary folder and runs everything on the copy. On the copy it runs `python -m equitune.pipeline.ui`, what
`make ui` runs: that gives the experiments the project's "Cells" view and starts `mlflow ui` on a free port.
Debian's Chromium (apt packages chromium and chromium-driver; selenium drives it) then opens the experiment's
runs table with that view, closes the MLflow Assistant panel and collapses the sidebar (both hide metric columns),
waits for the run rows and saves the viewport. It prints the run names the picture shows.

The store defaults to the pipeline's (`equitune.pipeline.tracking.tracking_uri`: `mlflow.db` at the repository
root); the runs table needs no artifacts, so `mlartifacts/` is not copied. The server, the browser and the copy are
gone when the script ends, after an error, Ctrl-C or SIGTERM too. Exit 2 with a one-line message for a missing store,
an unknown experiment or one without runs (the message lists the store's experiments), or a missing Chromium; exit 1
when the UI or the page does not come up.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from equitune.core.errors import ConfigError, DataError, EquituneError
from equitune.pipeline.mlflow_views import runs_table_url
from equitune.pipeline.services import free_port
from equitune.pipeline.tracking import EXPERIMENT_PREFIX, tracking_uri
from equitune.pipeline.ui import START_TIMEOUT_S

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# As tests/helpers/browser.py: a fresh profile per browser, and flags that keep Chromium off the network (this
# machine is offline; without them it keeps calling Google's update, sync and metrics hosts).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "mlflow-ui.png"
PAGE_WAIT_S = 90  # a page load on a busy 2-core machine
RUN_NAME_CELL = "[role='gridcell'][col-id='attributes.`Run Name`']"
ASSISTANT_CLOSE = "button[data-component-id='mlflow.assistant.chat_panel.close']"
SIDEBAR_TOGGLE = "//button[@aria-label='Toggle sidebar']"
SIDEBAR_SWITCH = "//*[normalize-space()='Model training']"  # the sidebar's mode switch: hidden once it is collapsed


def missing_browser() -> str | None:
    """Why Chromium cannot start here, or None."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if absent:
        return (f"{', '.join(absent)} not found: run scripts/setup.sh as root, or "
                "`apt-get install chromium chromium-driver`")
    return None


@contextmanager
def store_copy(uri: str) -> Iterator[tuple[str, Path]]:
    """A private copy of the SQLite store ``uri``: (its URI, its folder), both gone on the way out."""
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"--tracking-uri {uri}: only a local SQLite store (sqlite:///PATH) can be copied and "
                          "shown; for a team's server, open its UI directly")
    database = Path(uri[len("sqlite:///"):]).resolve()
    if not database.is_file():
        raise DataError(f"no MLflow store at {database}: the pipeline writes it (`make repro`)")
    with tempfile.TemporaryDirectory(prefix="equitune-ui-screenshot-") as folder:
        copy = Path(folder) / "mlflow.db"
        # mode=ro: this connection cannot write the live store; the backup waits out a writer's lock.
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=60)) as source, \
                closing(sqlite3.connect(copy)) as target:
            source.backup(target)
        yield f"sqlite:///{copy}", Path(folder)


def experiment_runs(uri: str) -> list[tuple[str, str, int]]:
    """(name, id, number of runs) of every active experiment in the store, by name."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    return sorted((experiment.name, experiment.experiment_id,
                   len(client.search_runs([experiment.experiment_id], max_results=1000)))
                  for experiment in client.search_experiments())


def pick_experiment(wanted: str, experiments: Sequence[tuple[str, str, int]], store: str) -> tuple[str, str, int]:
    """The experiment named ``wanted`` (or ``equitune-<wanted>``) with its runs; else a message listing the store's."""
    by_name = {name: (name, experiment_id, runs) for name, experiment_id, runs in experiments}
    found = by_name.get(wanted) or by_name.get(EXPERIMENT_PREFIX + wanted)
    listing = ", ".join(f"{name} ({runs} runs)" for name, _, runs in experiments) or "none"
    if found is None:
        raise ConfigError(f"no experiment {wanted!r} in {store}; its experiments: {listing}")
    if found[2] == 0:
        raise DataError(f"experiment {found[0]!r} in {store} has no runs; its experiments: {listing}")
    return found


class UiLauncher:
    """`python -m equitune.pipeline.ui` on the copy, in the background; its output collected line by line."""

    def __init__(self, uri: str, folder: Path, port: int):
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        env.pop("DVC_ROOT", None)  # tracking_uri() must not fall back to a repository's store
        # cwd: `mlflow ui` keeps uploaded artifacts under ./mlartifacts; nothing may land in the checkout.
        self.process = subprocess.Popen([sys.executable, "-m", "equitune.pipeline.ui", "--port", str(port)],
                                        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def wait_until_serving(self) -> None:
        """Until the launcher prints its links, which it does once `mlflow ui` answers."""
        limit_s = START_TIMEOUT_S + 60  # the launcher's own limit, plus its imports
        deadline = time.monotonic() + limit_s
        while not any("/runs?" in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                what = (f"exited with code {self.process.returncode}" if self.process.poll() is not None
                        else f"did not serve within {limit_s:.0f} s")
                tail = "".join(self.lines).strip().splitlines()[-1:] or [""]
                raise RuntimeError(f"the MLflow UI {what}: {tail[0]}")
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM: the launcher stops `mlflow ui` and its workers (equitune.pipeline.ui.serve), then exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def mlflow_ui(uri: str, folder: Path) -> Iterator[str]:
    """The MLflow UI on the store ``uri`` (a copy in ``folder``), on a free local port; yields its base URL."""
    port = free_port()
    launcher = UiLauncher(uri, folder, port)
    try:
        launcher.wait_until_serving()
        yield f"http://127.0.0.1:{port}"
    finally:
        launcher.stop()


@contextmanager
def chromium(width: int, height: int) -> Iterator:
    """Headless Chromium whose viewport is exactly ``width`` x ``height`` (the window also holds the browser's own
    bars, so the window size alone leaves a shorter page)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="equitune-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def show_runs_table(driver, url: str) -> None:
    """Open ``url`` and wait until the runs table shows its rows, with nothing covering its columns."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, PAGE_WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    driver.get(url)
    try:
        wait.until(lambda d: any(cell.text.strip() for cell in d.find_elements(By.CSS_SELECTOR, RUN_NAME_CELL)))
    except TimeoutException:
        raise RuntimeError(f"no run row appeared within {PAGE_WAIT_S} s at {url}") from None
    # MLflow 3.17 opens its Assistant chat on a fresh profile, over a third of the page; a later version may not.
    try:
        WebDriverWait(driver, 10).until(seen.element_to_be_clickable((By.CSS_SELECTOR, ASSISTANT_CLOSE))).click()
        wait.until(seen.invisibility_of_element_located((By.CSS_SELECTOR, ASSISTANT_CLOSE)))
    except TimeoutException:
        pass
    # The collapsed sidebar gives its width to the metric columns.
    toggles = driver.find_elements(By.XPATH, SIDEBAR_TOGGLE)
    if toggles:
        toggles[0].click()
        wait.until(seen.invisibility_of_element_located((By.XPATH, SIDEBAR_SWITCH)))
    # The grid lays its columns out again after the resize: let the browser paint twice before the shot.
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(() => done()));")


def visible_run_names(driver) -> list[str]:
    """The names in the Run Name cells that lie wholly inside the table's scrolled area (the grid also renders
    a few rows beyond it), top to bottom."""
    return driver.execute_script("""
        const cells = Array.from(document.querySelectorAll(arguments[0]));
        return cells.map(cell => {
            const box = cell.getBoundingClientRect();
            const area = (cell.closest('.ag-body-viewport') || document.documentElement).getBoundingClientRect();
            const inside = box.height > 0 && box.top >= area.top - 1 && box.bottom <= area.bottom + 1
                && box.bottom <= window.innerHeight;
            // The cell also holds the run's colour as hidden text: the name is its link to the run.
            const link = cell.querySelector("a[href*='/runs/']");
            return inside ? [box.top, (link || cell).textContent.trim()] : null;
        }).filter(entry => entry && entry[1]).sort((a, b) => a[0] - b[0]).map(entry => entry[1]);
    """, RUN_NAME_CELL)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (its IHDR chunk comes first)."""
    return struct.unpack(">II", png[16:24])


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 200:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1800x1000")
    return int(match[1]), int(match[2])


def take_screenshot(args: argparse.Namespace) -> int:
    width, height = args.size
    with store_copy(args.tracking_uri) as (copy_uri, folder):
        name, experiment_id, runs = pick_experiment(args.experiment, experiment_runs(copy_uri), args.tracking_uri)
        if (why := missing_browser()) is not None:
            raise ConfigError(why)
        with mlflow_ui(copy_uri, folder) as base_url, chromium(width, height) as driver:
            print(f"the MLflow UI on a copy of {args.tracking_uri}: {name}, {runs} runs", flush=True)
            show_runs_table(driver, runs_table_url(base_url, experiment_id))
            shown = visible_run_names(driver)
            png = driver.get_screenshot_as_png()
            page_text = driver.execute_script("return document.body.innerText")
    if png_size(png) != (width, height):
        raise RuntimeError(f"the browser returned a {'x'.join(map(str, png_size(png)))} picture, not {width}x{height}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_bytes(png)
    partial.replace(args.out)  # a reader never sees half a picture
    if args.page_text is not None:
        args.page_text.write_text(page_text)
    for run_name in shown:
        print(f"run: {run_name}")
    print(f"wrote {args.out} ({width}x{height}): {name}, {len(shown)} of {runs} runs in view")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from selenium.common.exceptions import WebDriverException

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None,
                        help="the store to show (default: the pipeline's, sqlite:///<repo>/mlflow.db)")
    parser.add_argument("--experiment", default=EXPERIMENT_PREFIX + "scan",
                        help="its name, or the task after 'equitune-' (default: equitune-scan)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the PNG to write (default: docs/mlflow-ui.png)")
    parser.add_argument("--size", type=parse_size, default=(1800, 1000),
                        help="viewport WIDTHxHEIGHT (default 1800x1000: the Cells view's four SCAN metrics fit)")
    parser.add_argument("--page-text", type=Path, default=None, help="also write the page's visible text here")
    args = parser.parse_args(argv)
    args.tracking_uri = args.tracking_uri or tracking_uri()

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # through the finally blocks: the server and the browser stop

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return take_screenshot(args)
    except EquituneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, sqlite3.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except WebDriverException as error:  # Chromium or chromedriver failed: their message, not a traceback
        print(f"error: the browser failed: {(error.msg or str(error)).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the finally blocks have stopped everything; no traceback
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
