"""What the real-ComfyUI and browser tests do when something they need is missing.

Locally they skip, and the terminal summary says so in a warning line. With
``LONGCAT_REQUIRE_COMFYUI=1`` (set by ``.ci/run``) they fail instead: CI never passes by skipping
them. A ``COMFYUI_DIR`` that is not a ComfyUI tree always fails.
"""

import importlib
import os
from pathlib import Path

import pytest

REQUIRE_ENV = "LONGCAT_REQUIRE_COMFYUI"
skipped: list[str] = []


def unavailable(reason: str):
    """Skip (locally) or fail (``LONGCAT_REQUIRE_COMFYUI=1``) the current test with ``reason``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: these tests must run)", pytrace=False)
    skipped.append(reason)
    pytest.skip(reason)


def comfyui_dir(what: str) -> str:
    """``COMFYUI_DIR``, checked to be a ComfyUI tree; ``what`` names the tests for the message."""
    path = os.environ.get("COMFYUI_DIR")
    if not path:
        unavailable(f"COMFYUI_DIR is not set: {what} did NOT run. Set COMFYUI_DIR to a ComfyUI "
                    "tree and run pytest with a Python that has ComfyUI's requirements.")
    if not (Path(path) / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={path} is not a ComfyUI tree (no main.py there)", pytrace=False)
    return path


def import_or_unavailable(module: str, hint: str):
    """``module`` imported, or the test skipped/failed saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed ({hint}): tests that need it did NOT run.")


def report(terminalreporter) -> None:
    """The warning lines of the terminal summary (once per reason, whichever conftest asks)."""
    for reason in dict.fromkeys(skipped):
        terminalreporter.write_line(f"WARNING: {reason}", yellow=True, bold=True)
    skipped.clear()
