"""Context parallel (longcat/parallel/exchange.py): 2 and 4 Gloo ranks equal one process, exactly.

Each world size starts one process group (tests/longcat/cp_ranks.py runs every check in it).
fp32 on CPU: the split changes no arithmetic (per-token layers see the same rows, attention the
same heads), so the bound is 1e-6 relative, far below any real difference (a head-order mistake
gives ~0.1).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from longcat_pack.longcat.parallel.exchange import (
    ContextParallel,
    check_world_size,
    frame_slices,
)

RANKS_SCRIPT = Path(__file__).resolve().parent / "cp_ranks.py"
EXACT = 1e-6
CHECKS = ("plain", "divisible_grid_cfg_batch", "conditioning_split", "kv_cache", "split_return_kv",
          "kv_cache_bsa", "bsa_torch", "bsa_triton", "bsa_window_dense_blocks")


def test_frame_slices_cover_each_frame_with_near_equal_parts():
    assert frame_slices(15, 4) == [(0, 4), (4, 8), (8, 12), (12, 15)]
    assert frame_slices(8, 2) == [(0, 4), (4, 8)]
    assert frame_slices(3520, 8)[-1] == (3080, 3520)  # 720p refine: 44x80 tokens per frame


def test_heads_must_divide_by_world_size():
    check_world_size(32, 8)
    with pytest.raises(ValueError, match=r"3 GPUs cannot split the DiT's 32 attention heads evenly; "
                                         r"use one of \[1, 2, 4, 8, 16\]"):
        check_world_size(32, 3)


def test_context_parallel_needs_an_initialised_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        ContextParallel()


def run_ranks(world_size, tmp_path) -> list[dict]:
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(RANKS_SCRIPT), str(rank), str(world_size), str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(world_size)]
    results = []
    try:
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"rank {rank} failed:\n{err[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # a failed rank must not leave the others waiting in a collective
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize("world_size", [2, 4])
def test_context_parallel_equals_one_process(world_size, tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch built without Gloo")
    results = run_ranks(world_size, tmp_path)
    for rank, result in enumerate(results):
        for check in CHECKS:
            value = result[check]
            # BSA checks compare on rank 0 only (every rank returns the same gathered output).
            if value is None and check.startswith("bsa_") and rank > 0:
                continue
            assert isinstance(value, float) and value <= EXACT, f"rank {rank} {check}: {value}"
        assert result["heads_not_divisible"] == (f"{world_size} GPUs cannot split the DiT's 3 attention "
                                                 f"heads evenly; use one of [1, 3]")
