"""On a ComfyUI older than the pack's minimum: one clear log line, no LongCat nodes, no crash.

Runs when ``COMFYUI_OLD_DIR`` points at such a ComfyUI tree (e.g. 0.3.59, the last release
before the minimum 0.3.60, or 0.3.47, from before V3 nodes), started with ``COMFY_PYTHON``.
"""

import os

import pytest
from comfy_server import ComfyServer

from longcat_pack import MIN_COMFYUI

OLD_DIR = os.environ.get("COMFYUI_OLD_DIR")
pytestmark = pytest.mark.skipif(not OLD_DIR, reason="COMFYUI_OLD_DIR is not set")


def test_older_comfyui_starts_with_one_clear_line(tmp_path):
    with ComfyServer(OLD_DIR, tmp_path) as server:
        info = server.get("/object_info")
        log = server.log_text()
    assert "KSampler" in info and not [k for k in info if k.startswith("LongCat")]
    minimum = ".".join(map(str, MIN_COMFYUI))
    # ComfyUI's own import-time listing names the pack folder too ("0.0 seconds: ...LongCat-Video").
    ours = [line for line in log.splitlines() if "LongCat" in line and " seconds: " not in line]
    assert len(ours) == 1 and f"LongCat-Video needs ComfyUI {minimum} or newer" in ours[0], ours
    assert "NODE_CLASS_MAPPINGS" not in log and "Traceback" not in log, log
