"""One rank of the context-parallel equality checks (run by test_parallel.py, not by pytest).

``python cp_ranks.py RANK WORLD_SIZE STORE_FILE``: joins a Gloo group through a FileStore, runs
every check with the DiT split over the group and in this process alone (single-GPU math, same
weights and inputs on every rank), and prints one JSON line ``{check: relative error or error
text}``. Several checks per process keep the number of process groups the suite starts small.
"""

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"  # the Triton BSA kernel on CPU

import torch
import torch.distributed as dist

from _standalone import import_pack

import_pack()
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.options import CP_OPTIONS_KEY
from longcat_pack.longcat.parallel.exchange import ContextParallel
from tiny_dit import BSALog, tiny_dit

# 4 heads of 64 (what the Triton kernel takes), so 1, 2 and 4 ranks can split them.
CP_DIT = {"hidden_size": 256, "num_heads": 4}
CHUNK = {"chunk_3d_shape_q": (2, 2, 2), "chunk_3d_shape_k": (2, 2, 2)}


def relative_error(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


def inputs(t, h, w, batch=1, seed=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, t, h, w, generator=g)
    ctx = torch.randn(batch, 6, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * batch)
    return x, ctx, mask


def both(model, cp, *args, opts=None, alone=True, **kwargs):
    """(context-parallel output, single-process output or None if not ``alone``) of one DiT call."""
    opts = dict(opts or {})
    with torch.no_grad():
        reference = model(*args, transformer_options=opts, **kwargs) if alone else None
        split = model(*args, transformer_options={**opts, CP_OPTIONS_KEY: cp}, **kwargs)
    return split, reference


def check_plain(model, cp):
    # 3x5 tokens per frame: 15 does not divide by 2 or 4, so the shards are uneven.
    x, ctx, mask = inputs(3, 6, 10)
    return relative_error(*both(model, cp, x, torch.tensor([700.0]), ctx, mask))


def check_divisible_grid_cfg_batch(model, cp):
    x, ctx, mask = inputs(4, 8, 8, batch=2)
    return relative_error(*both(model, cp, x, torch.tensor([300.0, 800.0]), ctx, mask))


def check_conditioning_split(model, cp):
    x, ctx, mask = inputs(5, 6, 10)
    return relative_error(*both(model, cp, x, torch.tensor([700.0]), ctx, mask, num_cond_latents=2))


def check_kv_cache(model, cp, opts=None):
    """Cache built under CP (each rank its heads), then the cached forward = one process's."""
    x, ctx, mask = inputs(5, 6, 10)
    opts = opts or {}
    with torch.no_grad():
        cache_cp = model.build_kv_cache(x[:, :, :2], transformer_options={**opts, CP_OPTIONS_KEY: cp})
        cache = model.build_kv_cache(x[:, :, :2], transformer_options=opts)
        got = model(x[:, :, 2:], torch.tensor([600.0]), ctx, mask, num_cond_latents=2, kv_cache=cache_cp,
                    transformer_options={**opts, CP_OPTIONS_KEY: cp})
        want = model(x[:, :, 2:], torch.tensor([600.0]), ctx, mask, num_cond_latents=2, kv_cache=cache,
                     transformer_options=opts)
    heads = model.num_heads // cp.world_size
    first = slice(cp.rank * heads, (cp.rank + 1) * heads)
    cache_error = max(relative_error(cache_cp[i][j], cache[i][j][:, first]) for i in cache for j in (0, 1))
    return max(relative_error(got, want), cache_error)


def check_split_return_kv(model, cp):
    x, ctx, mask = inputs(5, 6, 10)
    (out_cp, kv_cp), (out, kv) = both(model, cp, x, torch.tensor([700.0]), ctx, mask, num_cond_latents=2,
                                      return_kv=True)
    heads = model.num_heads // cp.world_size
    first = slice(cp.rank * heads, (cp.rank + 1) * heads)
    return max(relative_error(out_cp, out), *(relative_error(kv_cp[i][0], kv[i][0][:, first]) for i in kv))


def check_bsa(model, cp, backend, frames=3):
    # Grid Tx3x5 is not a multiple of the 2x2x2 chunk: BSA pads; selection must still match.
    x, ctx, mask = inputs(frames, 6, 10)
    settings, log = BSASettings(sparsity=0.5, backend=backend, **CHUNK), BSALog()
    # Every rank returns the same gathered output: rank 0 alone compares (saves interpreter time).
    split, alone = both(model, cp, x, torch.tensor([700.0]), ctx, mask, alone=cp.rank == 0,
                        opts={"longcat_bsa": settings, "longcat_bsa_log": log})
    ran = {report.backend for _, report in log.reports}
    if ran != {backend}:
        return f"BSA ran on {ran}, not {backend}"
    return None if alone is None else relative_error(split, alone)


def check_bsa_conditioning_window_dense_blocks(model, cp):
    x, ctx, mask = inputs(5, 6, 10)
    settings = BSASettings(sparsity=0.5, backend="torch", dense_blocks=frozenset({1}),
                           sigma_min=0.2, sigma_max=0.8, **CHUNK)
    inside = both(model, cp, x, torch.tensor([700.0]), ctx, mask, num_cond_latents=2,
                  opts={"longcat_bsa": settings, "sigmas": torch.tensor([0.7])})
    outside = both(model, cp, x, torch.tensor([900.0]), ctx, mask, num_cond_latents=2,
                   opts={"longcat_bsa": settings, "sigmas": torch.tensor([0.9])})
    return max(relative_error(*inside), relative_error(*outside))


def check_heads_not_divisible(cp):
    model = tiny_dit(hidden_size=96, num_heads=3)
    x, ctx, mask = inputs(3, 6, 10)
    try:
        both(model, cp, x, torch.tensor([700.0]), ctx, mask)
    except ValueError as err:
        return str(err)
    return "no error"


def run_checks(cp) -> dict:
    model = tiny_dit(**CP_DIT)
    checks = {
        "plain": lambda: check_plain(model, cp),
        "divisible_grid_cfg_batch": lambda: check_divisible_grid_cfg_batch(model, cp),
        "conditioning_split": lambda: check_conditioning_split(model, cp),
        "kv_cache": lambda: check_kv_cache(model, cp),
        "split_return_kv": lambda: check_split_return_kv(model, cp),
        "kv_cache_bsa": lambda: check_kv_cache(
            model, cp, {"longcat_bsa": BSASettings(sparsity=0.5, backend="torch", **CHUNK)}),
        "bsa_torch": lambda: check_bsa(model, cp, "torch"),
        # The Triton interpreter runs a few programs a second: one block, two frames.
        "bsa_triton": lambda: check_bsa(tiny_dit(**CP_DIT, depth=1), cp, "triton", frames=2),
        "bsa_window_dense_blocks": lambda: check_bsa_conditioning_window_dense_blocks(model, cp),
        "heads_not_divisible": lambda: check_heads_not_divisible(cp),
    }
    results = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception:  # noqa: BLE001 -- report it: the test prints every rank's failures
            results[name] = "raised: " + traceback.format_exc(limit=3)
    return results


def main():
    rank, world_size, store_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    store = dist.FileStore(store_file, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        results = run_checks(ContextParallel())
    finally:
        dist.destroy_process_group()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
