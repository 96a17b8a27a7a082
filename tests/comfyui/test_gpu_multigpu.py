"""The LongCat Multi-GPU node's worker lifecycle on real GPUs, in a real ComfyUI server (marker
``gpu``): start, a step, Cancel, a worker killed mid-step, restart, Unload Models, fp8 weights,
server exit, with NCCL and no process left behind.

Runs ``bench/bench_multigpu.py --tiny`` (the tests' tiny DiT; the pool, NCCL and the server
are real) over every visible GPU. NCCL cannot put two ranks on one GPU, so it needs two or
more; with one it is skipped. Needs ``COMFYUI_DIR`` and ComfyUI's requirements in the Python
running pytest (on the device machine: the wheels of ``bench/README.md``):

    COMFYUI_DIR=.comfyui python -m pytest tests/comfyui/test_gpu_multigpu.py -m gpu -q
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

pytestmark = [pytest.mark.gpu, pytest.mark.comfyui,
              pytest.mark.skipif(torch.cuda.device_count() < 2,
                                 reason="needs 2 CUDA GPUs (NCCL refuses two ranks on one GPU)"),
              pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set")]


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    cmd = [comfy_python(), str(ROOT / "bench" / "bench_multigpu.py"), "--tiny", "--comfyui", COMFYUI_DIR,
           "--out", str(out), "--work", str(work), "--gpus", "2", "--timeout", "60"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("multigpu_*x2_*.json")
    result = json.loads(path.read_text())
    return {row["phase"]: row for row in result["phases"]}


def test_steps_run_and_the_workers_stay_between_them(lifecycle):
    first, forward = lifecycle["first"], lifecycle["forward"]
    assert first["status"] == forward["status"] == "success", (first["error"], forward["error"])
    assert first["start_s"] > 0 and first["weights"]["workers"] == 1  # started, weights sent
    assert len(first["workers_after"]) == 1 and forward["workers_after"] == first["workers_after"]
    assert "weights" not in forward  # same weights: nothing sent again
    assert "kernel triton" in first["bsa_report"], first["bsa_report"]


def test_cancel_keeps_the_workers(lifecycle):
    cancel = lifecycle["cancel"]
    assert cancel["error"] == "interrupted"
    assert cancel["workers_after"] == cancel["workers_before"] != []


def test_killed_worker_is_named_and_nothing_is_left(lifecycle):
    kill = lifecycle["kill"]
    pid = kill["workers_before"][-1]
    assert kill["status"] == "error"
    assert f"pid {pid}) was killed by signal 9" in kill["error"], kill["error"]
    assert kill["workers_after"] == [] and kill["ended_after_s"] < 30
    restart = lifecycle["restart"]
    assert restart["status"] == "success" and restart["weights"]["workers"] == 1
    assert restart["workers_after"] and pid not in restart["workers_after"]


def test_unload_fp8_and_exit_leave_no_process(lifecycle):
    unload = lifecycle["unload"]
    assert unload["workers_after"] == [] and unload["workers_gone_after_s"] is not None
    fp8 = lifecycle["fp8"]
    assert fp8["status"] == "success", fp8["error"]
    assert fp8["weights"]["mib"] < lifecycle["first"]["weights"]["mib"]  # fp8 weights travel as fp8
    assert lifecycle["exit"]["workers_after"] == []
