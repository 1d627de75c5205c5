"""`dvc plots show` pages draw in a browser that cannot reach the internet (scripts/offline_plots.py).

A toy DVC project with two curves; the template is built with npm (as scripts/setup.sh does) and set in the
project's local DVC config; `dvc plots show` writes the page; headless Chromium, with every host name unresolvable,
opens it and must find one drawn chart (an SVG or canvas inside vega-embed's container) per curve. The control is
DVC's own page, which loads its scripts from a CDN: in the same browser it draws nothing, so the test would fail
if the template were not used or the browser could reach the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.browser import OFFLINE, chromium, missing_browser, save_page
from helpers.paths import ROOT

pytestmark = pytest.mark.slow

# Vega draws a chart as one SVG or canvas of class "marks" (vega-embed's own menu icon is another, unclassed, SVG).
CHARTS = "return document.querySelectorAll('.vega-embed .marks').length"


def _toy_project(folder: Path) -> Path:
    folder.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=folder, check=True)
    (folder / "curves").mkdir()
    for name in ("a", "b"):
        rows = "\n".join(f"{step},{1 - 0.5 ** (step + (name == 'b'))}" for step in range(6))
        (folder / "curves" / f"{name}.csv").write_text("step,accuracy\n" + rows + "\n")
    (folder / "dvc.yaml").write_text("plots:\n  - curves:\n      x: step\n      y: accuracy\n")
    return folder


def _show(project: Path, out: str, *extra: str) -> Path:
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "plots", "show", "-o", out, *extra], cwd=project, check=True, capture_output=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return project / out / "index.html"


def _charts_drawn(driver, page: Path, expected: int, wait_s: float = 20) -> int:
    driver.get(page.as_uri())
    deadline, count = time.monotonic() + wait_s, 0
    while time.monotonic() < deadline:
        count = driver.execute_script(CHARTS)
        if count >= expected:
            break
        time.sleep(0.25)
    return count


def test_plots_pages_draw_with_every_host_unreachable(tmp_path):
    if (reason := missing_browser()) is not None:
        pytest.fail(reason)
    project = _toy_project(tmp_path / "toy")
    template = tmp_path / "plots-offline.html"
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "offline_plots.py"), "--out", str(template),
                            "--repo", str(project)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    assert str(template) in (project / ".dvc" / "config.local").read_text()

    offline_page = _show(project, "offline")  # plain `dvc plots show`: the local config names the template
    default_page = _show(_toy_project(tmp_path / "toy-default"), "default")  # no template configured: DVC's page
    assert "cdn.jsdelivr" not in offline_page.read_text() and "cdn.jsdelivr" in default_page.read_text()

    with chromium(OFFLINE) as driver:
        drawn = _charts_drawn(driver, offline_page, expected=2)
        if drawn != 2:
            save_page(driver, tmp_path / "failed", "offline")
        control = _charts_drawn(driver, default_page, expected=1, wait_s=5)
    assert drawn == 2, f"{drawn} charts drawn offline; page and screenshot in {tmp_path / 'failed'}"
    assert control == 0, "DVC's CDN page drew charts: the browser reached the network, so this test proves nothing"
