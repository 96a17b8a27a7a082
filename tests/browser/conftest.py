"""Headless-browser test setup: a CPU ComfyUI server with the pack (no model files) and Chromium.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI tree, Debian's ``chromium`` is installed
(``CHROMIUM`` overrides the path) and ``playwright`` is importable (never run
``playwright install``: the system browser is used). Otherwise every test here is skipped and
the terminal summary says so in a warning line.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "harness"))
from comfy_server import ComfyServer

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a root, offline, GPU-less container (reference: comfyui.md, "Testing in a real browser").
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

_skipped: list[str] = []


def _skip(reason: str):
    _skipped.append(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def frontend_server(tmp_path_factory):
    """ComfyUI serving its frontend, with the pack and an empty models folder."""
    if not COMFYUI_DIR:
        _skip("COMFYUI_DIR is not set: the browser tests did NOT run.")
    if not os.path.exists(CHROMIUM):
        _skip(f"no Chromium at {CHROMIUM} (apt-get install chromium): browser tests did NOT run.")
    with ComfyServer(COMFYUI_DIR, tmp_path_factory.mktemp("browser_base")) as server:
        yield server


@pytest.fixture(scope="session")
def chromium(frontend_server):
    """A headless Chromium driven by Playwright (sync API)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("playwright is not installed (pip install playwright): browser tests did NOT run.")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def pytest_terminal_summary(terminalreporter):
    for reason in dict.fromkeys(_skipped):
        terminalreporter.write_line(f"WARNING: {reason}", yellow=True, bold=True)
