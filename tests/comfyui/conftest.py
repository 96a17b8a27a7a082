"""Real-ComfyUI test setup: one CPU ComfyUI server per session with the pack and tiny models.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI tree; pytest must then run with a Python
that has ComfyUI's requirements (or set ``COMFY_PYTHON``). Without ``COMFYUI_DIR`` every test
here is skipped and the terminal summary says so in a warning line; with
``LONGCAT_REQUIRE_COMFYUI=1`` (CI) they fail instead (``availability.py``).

Fixture ``comfy_server`` (session): a started ``comfy_server.ComfyServer`` whose base
directory holds the pack (symlinked into custom_nodes/), the ``tiny_models.TINY`` models and the test-only
text node (``LONGCAT_TEST_NODES=1``).
"""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import availability
import tiny_models
from comfy_server import ComfyServer, comfy_python


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory):
    """A ComfyUI base directory with the tiny models written; dict of names and paths."""
    comfyui_dir = availability.comfyui_dir("the real-ComfyUI tests")
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    subprocess.run([comfy_python(), tiny_models.__file__, str(models)], cwd=comfyui_dir, check=True)
    return {
        "comfyui_dir": comfyui_dir, "base": base, "loras": str(models / "loras"),
        "dit": str(models / "diffusion_models" / tiny_models.DIT_FILE),
        "official_lora": tiny_models.OFFICIAL_LORA_FILE,
        "official_lora_path": str(models / "loras" / tiny_models.OFFICIAL_LORA_FILE),
        "comfy_lora_path": str(models / "loras" / tiny_models.COMFY_LORA_FILE),
    }


@pytest.fixture(scope="session")
def comfy_server(comfy_models):
    with ComfyServer(comfy_models["comfyui_dir"], comfy_models["base"], extra_env={"LONGCAT_TEST_NODES": "1"}) as server:
        yield server


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def pytest_terminal_summary(terminalreporter):
    availability.report(terminalreporter)
