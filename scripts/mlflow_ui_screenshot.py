"""The README's screenshot of the MLflow UI: an experiment's runs table with the "Cells" view, in headless Chromium.

    python scripts/mlflow_ui_screenshot.py [--experiment equitune-scan] [--out docs/mlflow-ui.png]

Runs `python -m equitune.pipeline.ui` (what `make ui` runs) on this checkout's store on a free port, opens the
experiment's printed link in Debian's Chromium (apt packages chromium and chromium-driver, as for the UI test),
closes the assistant panel and saves a 1800x900 screenshot. Needs a store with runs (`make repro`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1800,900", "--hide-scrollbars")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="equitune-scan")
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow-ui.png"))
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    launcher = subprocess.Popen([sys.executable, "-m", "equitune.pipeline.ui", "--port", str(free_port())],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    profile = tempfile.mkdtemp(prefix="equitune-chromium-")
    try:
        link = None
        for line in launcher.stdout:
            print(line, end="")
            if args.experiment in line and "/runs?" in line:
                link = re.search(r"http://\S+", line).group(0)
                break
        if link is None:
            print(f"error: no link for {args.experiment}", file=sys.stderr)
            return 1
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            wait = WebDriverWait(driver, 90)
            driver.get(link)
            wait.until(seen.presence_of_element_located((By.XPATH, "//*[@role='columnheader'][normalize-space()='seed']")))
            for button in driver.find_elements(By.XPATH, "//button[@aria-label]"):
                if "close" in button.get_attribute("aria-label").lower() and button.is_displayed():
                    button.click()  # the MLflow Assistant panel, open by default, hides half of the table
                    break
            print([b.get_attribute("aria-label") for b in driver.find_elements(By.XPATH, "//button[@aria-label]")])
            time.sleep(2)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            print(f"wrote {args.out}")
        finally:
            driver.quit()
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
