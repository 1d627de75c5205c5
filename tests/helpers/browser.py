"""A real browser for the UI tests: Debian's headless Chromium and its chromedriver, driven through selenium.

Nothing is downloaded at run time: selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver, which
scripts/setup.sh installs (apt packages chromium and chromium-driver). Each browser gets a fresh profile, and
the flags keep it off the network: without them Chromium keeps trying to reach Google's update, sync and
metrics hosts, which this offline machine refuses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1600,1000")


def missing_browser() -> str | None:
    """Why the browser cannot start here, or None."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if absent:
        return (f"{', '.join(absent)} not found: run scripts/setup.sh as root, or "
                "`apt-get install chromium chromium-driver`")
    return None


OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND",)
"""Flags that make every host name unresolvable: a page that needs the internet fails as it would offline."""


@contextmanager
def chromium(extra_flags: tuple[str, ...] = ()) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="equitune-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save_page(driver, folder: Path, name: str) -> list[Path]:
    """A screenshot and the page's HTML, for a failed test to point at."""
    folder.mkdir(parents=True, exist_ok=True)
    shot, html = folder / f"{name}.png", folder / f"{name}.html"
    driver.save_screenshot(str(shot))
    html.write_text(driver.page_source)
    return [shot, html]
