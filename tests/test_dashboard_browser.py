"""The served dashboard in a real headless Chromium: every view loads without an exception box and is saved as a PNG.

The test starts `serialmon dashboard --no-browser` on a free port against a
seeded database, opens each tab, waits for that view's content and saves a
screenshot (also into SERIALMON_SCREENSHOT_DIR when it is set). Without
Chromium the test is skipped, unless SERIALMON_REQUIRE_BROWSER=1 (CI sets it),
which turns the skip into a failure.

Run as a script, it captures the views of a dashboard that is already running,
which is how docs/screenshots were made:

    python tests/test_dashboard_browser.py --url http://127.0.0.1:8501 --out docs/screenshots
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 900}
START_TIMEOUT_SEC = 90
VIEW_TIMEOUT_MS = 60_000

# Each tab and a text that only its view shows: once the text is visible, the view has drawn.
VIEW_MARKERS = {
    "Overview": "Batch jobs",
    "Quality": "Worst models",
    "Categories": "come from the ledger",
    "Trends": "aligned to the clock",
    "Failures": "Failed attempts",
    "Recent models": "Search model names",
    "Database": "JSONB columns",
    "Alerts": "Active alerts",
}


def chromium_path() -> str | None:
    """Return the system Chromium, or None when it is not installed."""
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _require_chromium() -> str:
    path = chromium_path()
    if path is not None:
        return path
    message = "Chromium not installed: apt-get install chromium to run the browser test"
    if os.environ.get("SERIALMON_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (SERIALMON_REQUIRE_BROWSER=1 requires it)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the dashboard exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer at {url} within {START_TIMEOUT_SEC} s:\n{log.read_text()}")


def capture_views(url: str, folders: list[Path], executable: str) -> dict[str, int]:
    """Open each tab of the dashboard at `url`, wait for its content, and save `<view>.png` into each folder.

    Returns {view label: number of Streamlit exception boxes on that view}.
    """
    from playwright.sync_api import sync_playwright

    exceptions: dict[str, int] = {}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Overview").wait_for(timeout=VIEW_TIMEOUT_MS)
            for label, marker in VIEW_MARKERS.items():
                page.get_by_role("tab", name=label).click()
                page.get_by_text(marker).first.wait_for(state="visible", timeout=VIEW_TIMEOUT_MS)
                _wait_until_idle(page)
                exceptions[label] = page.locator('[data-testid="stException"]').count()
                image = page.screenshot()
                for folder in folders:
                    (folder / f"{label.lower().replace(' ', '_')}.png").write_bytes(image)
        finally:
            browser.close()
    return exceptions


def _wait_until_idle(page) -> None:
    """Wait until Streamlit finishes the rerun and the Plotly charts have drawn."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=VIEW_TIMEOUT_MS
    )
    # Checked against the live DOM at each poll: a rerun may replace the charts while the test waits.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".filter(chart => chart.offsetParent !== null)"
        ".every(chart => chart.querySelector('.main-svg'))",
        timeout=VIEW_TIMEOUT_MS,
    )
    page.wait_for_timeout(800)  # Plotly animates its first layout


@pytest.fixture
def seeded_database(initialized, database_url: str) -> Iterator[str]:
    """The test database with a simulated run of 150 models and one size sample."""
    import asyncio

    from serialmon.collector import reset_serialize_metrics_collector
    from serialmon.monitor import DatabaseMonitor
    from serialmon.simulate import SimulationConfig, run_simulation

    reset_serialize_metrics_collector()
    run_simulation(SimulationConfig(count=150, seed=3, content_kb=1, workers=1, history_hours=0.0), initialized)
    reset_serialize_metrics_collector()
    asyncio.run(DatabaseMonitor(initialized).get_full_report())
    yield database_url


@pytest.mark.browser
def test_every_view_renders_in_chromium(seeded_database: str, tmp_path: Path):
    executable = _require_chromium()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dashboard.log"
    environment = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("SERIALMON_", "SMTP_", "ALERT_")) and key not in ("MODEL_DATA_DB_URL", "DATABASE_URL")
    }
    environment.update(DATABASE_URL=seeded_database, SERIALMON_DATA_DIR=str(tmp_path / "data"))

    with log.open("w") as output:
        # A session of its own, so the dashboard and its Streamlit child stop together at the end.
        process = subprocess.Popen(
            [sys.executable, "-m", "serialmon.cli", "dashboard", "--no-browser", "--port", str(port)],
            env=environment, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_serving(url, process, log)
        folders = [tmp_path / "screenshots"]
        if os.environ.get("SERIALMON_SCREENSHOT_DIR"):
            folders.append(Path(os.environ["SERIALMON_SCREENSHOT_DIR"]))
        exceptions = capture_views(url, folders, executable)
    finally:
        _stop(process)

    assert exceptions == {label: 0 for label in VIEW_MARKERS}
    for label in VIEW_MARKERS:
        image = tmp_path / "screenshots" / f"{label.lower().replace(' ', '_')}.png"
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.stat().st_size > 10_000, f"{image.name} looks blank"
    assert "Traceback" not in log.read_text()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    if not hasattr(os, "killpg"):  # Windows: no process groups; the dashboard forwards termination itself
        process.terminate()
        process.wait(timeout=15)
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Save a screenshot of each dashboard view.")
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="a running dashboard")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    arguments = parser.parse_args()
    found = chromium_path()
    if found is None:
        sys.exit("Chromium not installed: apt-get install chromium")
    print(capture_views(arguments.url, [arguments.out], found))
