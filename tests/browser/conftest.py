"""Headless-browser test setup: a CPU ComfyUI server with the pack (no model files) and Chromium.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI tree, Debian's ``chromium`` is installed
(``CHROMIUM`` overrides the path) and ``playwright`` is importable (never run
``playwright install``: the system browser is used). Otherwise every test here is skipped and
the terminal summary says so in a warning line; with ``LONGCAT_REQUIRE_COMFYUI=1`` (CI) they
fail instead (``tests/comfyui/availability.py``).
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "harness"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfyui"))
import availability
from comfy_server import ComfyServer

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a root, offline, GPU-less container (reference: comfyui.md, "Testing in a real browser").
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="session")
def frontend_server(tmp_path_factory):
    """ComfyUI serving its frontend, with the pack and an empty models folder."""
    comfyui_dir = availability.comfyui_dir("the browser tests")
    if not os.path.exists(CHROMIUM):
        availability.unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium): "
                                 "browser tests did NOT run.")
    with ComfyServer(comfyui_dir, tmp_path_factory.mktemp("browser_base")) as server:
        yield server


@pytest.fixture(scope="session")
def chromium(frontend_server):
    """A headless Chromium driven by Playwright (sync API)."""
    sync_api = availability.import_or_unavailable("playwright.sync_api", "pip install playwright")
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def pytest_terminal_summary(terminalreporter):
    availability.report(terminalreporter)
