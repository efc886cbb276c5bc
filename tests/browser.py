"""The dashboard in a real browser: Debian's headless Chromium through chromedriver (selenium).

Shared by the dashboard's integration tests (against the test plane) and the end-to-end tests
that look at a live lab's cluster through it. Screenshots go under build/artifacts/dashboard/.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options as ChromeOptions
from selenium.webdriver.chrome.service import Service as ChromeService

from plunder.lab import processes
from tests.conftest import eventually

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    # No network here but loopback: without these, Chromium stalls on refused connections.
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


@contextmanager
def headless_chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium with a fresh profile in ``profile``, quit afterwards."""
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def running_dashboard(kubeconfig: Path, namespace: str, folder: Path) -> Iterator[str]:
    """``plunderctl dashboard`` for ``namespace``, as a process a person starts; its base URL."""
    port = processes.free_port()
    argv = [sys.executable, "-m", "plunder.cli.main", "dashboard"]
    argv += ["--kubeconfig", str(kubeconfig), "--namespace", namespace, "--port", str(port)]
    managed = processes.start("dashboard", argv, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until(processes.http_ok(f"{url}/healthz"), "dashboard", managed)
        eventually(lambda: '"plundermachines"' in get(f"{url}/healthz")[1], "every kind listed")
        yield url
    finally:
        processes.stop(managed.pid)


def get(url: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    """Status, body and headers of one request (an error status is an answer too)."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save the whole page as ``build/artifacts/dashboard/<name>.png``; print its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The whole page: the window as tall as the page plus the browser's own frame.
    height = js(driver, "return document.documentElement.scrollHeight")
    frame = js(driver, "return window.outerHeight - window.innerHeight")
    driver.set_window_size(1400, max(1100, min(int(height) + int(frame) + 20, 4000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1100)
    print(f"screenshot: {path}")
    return path


def js(driver: webdriver.Chrome, script: str) -> Any:
    """What ``script`` returns in the page (read in one go: no element goes stale between)."""
    return driver.execute_script(script)


def click(driver: webdriver.Chrome, selector: str) -> None:
    """Click the first element ``selector`` finds, found and clicked in one go in the page.

    A live update may replace a row between selenium's finding and its clicking; a person's
    click lands on whatever is there, and so does this one.
    """
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def open_page(driver: webdriver.Chrome, url: str) -> None:
    driver.get(url)
    eventually(
        lambda: js(driver, "return document.getElementById('live').textContent") == "live",
        "the page's change stream open",
    )


def look_at_a_live_cluster(
    kubeconfig: Path, namespace: str, cluster: str, machines: int, folder: Path
) -> list[str]:
    """Open the dashboard on a live lab: the fleet's page and ``cluster``'s, with screenshots.

    Waits until the cluster's page draws a timeline row for each of its ``machines`` (each
    row: "machine · host"), keeps ``lab-fleet.png`` and ``lab-cluster.png``, and returns the
    rows.
    """
    rows_js = (
        "return [...document.querySelectorAll('#cluster-timeline g.timeline-row')]"
        ".map(g => g.dataset.row)"
    )
    with (
        running_dashboard(kubeconfig, namespace, folder) as url,
        headless_chromium(folder / "chromium-profile") as driver,
    ):
        open_page(driver, f"{url}/#/")
        eventually(
            lambda: js(driver, "return document.querySelectorAll('tr.host-row').length") > 0,
            "the fleet's hosts listed",
        )
        screenshot(driver, "lab-fleet")
        open_page(driver, f"{url}/#/cluster/{namespace}/{cluster}")
        eventually(lambda: len(js(driver, rows_js)) == machines, f"{machines} machines' timelines")
        screenshot(driver, "lab-cluster")
        rows: list[str] = js(driver, rows_js)
        return rows
