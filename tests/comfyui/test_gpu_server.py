"""A real ComfyUI server on the GPU runs a LongCat stage under a VRAM budget (marker ``gpu``).

Runs ``bench/bench_comfyui_vram.py --tiny`` (the tests' tiny DiT and sizes, full-size random
Wan 2.1 VAE) on CUDA: the text-to-video + refine-with-BSA workflow, queued through ``/prompt``
on a server that plans for a 24 GB card (``--reserve-vram``, ``--lowvram``, fp8 weights) with
the bench's hard VRAM cap. Needs CUDA, ``COMFYUI_DIR`` and ComfyUI's requirements in the
Python running pytest (on the device machine: the wheels of ``bench/README.md``):

    COMFYUI_DIR=.comfyui python -m pytest tests/comfyui/test_gpu_server.py -m gpu -q
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from comfy_server import comfy_python

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CASE = "24g_fp8_lowvram"

pytestmark = [pytest.mark.gpu, pytest.mark.comfyui,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set")]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    cmd = [comfy_python(), str(ROOT / "bench" / "bench_comfyui_vram.py"), "--tiny",
           "--comfyui", COMFYUI_DIR, "--out", str(out), "--work", str(work), "--cases", CASE,
           "--stages", "refine", "--time-budget", "900"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "comfyui_vram.json").read_text())


def test_stage_completes_on_the_gpu_under_the_budget(bench_run):
    case = bench_run["cases"][CASE]
    assert not case.get("error"), case.get("log_tail")
    (stage,) = case["stages"]
    assert stage["status"] == "success", stage["error"]
    assert case["budget_applied"] and "--reserve-vram" in case["server_options"]
    cap = case["probe_at_start"]["cap"]
    assert cap["budget_gib"] == 24 and 0 < cap["torch_limit"] <= 24 * 2**30
    assert 0 < stage["vram"]["max_allocated"] <= 24
    assert any("load cuda" in line for line in case["log_summary"]["pack_loader"])


def test_refinement_ran_the_triton_kernel_and_was_timed(bench_run):
    (stage,) = bench_run["cases"][CASE]["stages"]
    assert stage["timing"]["steps_done"] == stage["notes"]["refine_steps"] == 2
    assert stage["timing"]["s_per_step"] > 0
    (report,) = stage["outputs"]["texts"]
    assert "kernel triton" in report, report
    assert len(stage["outputs"]["videos"]) == 2  # stage 1 (480p) and the refined video
