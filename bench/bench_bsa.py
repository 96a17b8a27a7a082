"""How fast is our BSA forward against dense SDPA and FlexAttention at LongCat's grids?

For each grid and sparsity (B=1, 32 heads, D=128, bf16, chunks 4×4×4, top-K gating, random
normal q/k/v in raster order) this times, with ``triton.testing.do_bench`` medians:
  * dense SDPA, flash backend and cuDNN backend;
  * FlexAttention (torch.compile'd) over exactly our selected 64-token blocks, on chunk-ordered
    inputs (gating and reorders excluded, like the kernel-only number);
  * ours: gating (pool + score + top-K + sort, on chunk-ordered inputs), the Triton kernel alone,
    and the whole public call (reorders + gating + kernel + inverse reorder).
It prints a table and writes JSON (card, versions, shapes, every number).

Usage (on a CUDA machine): python bench/bench_bsa.py --out results.json [--grids 480p,720p,refine]
"""

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack

import_pack()
from longcat_pack.kernels import block_sparse_attention
from longcat_pack.kernels.bsa_fwd_triton import bsa_fwd_triton
from longcat_pack.kernels.chunking import make_layout, to_chunk_order
from longcat_pack.kernels.gating import gate

GRIDS = {"480p": (24, 32, 52), "720p": (24, 44, 80), "refine": (48, 44, 80)}
SPARSITIES = (0.875, 0.9375, 0.96875)
HEADS, HEAD_DIM, CHUNK = 32, 128, (4, 4, 4)
# Official LongCat BSA on an H200 (reference/kernels.md, last section): total, gating, kernel ms.
OFFICIAL_H200 = {
    ("480p", 0.875): (11.24, 0.96, 8.50), ("480p", 0.9375): (7.23, 0.96, 4.34),
    ("480p", 0.96875): (5.20, 0.92, 2.23), ("720p", 0.875): (46.90, 2.44, 40.68),
    ("720p", 0.9375): (26.31, 2.03, 20.49), ("720p", 0.96875): (16.57, 2.02, 10.49),
    ("refine", 0.9375): (118.41, 5.81, 97.03), ("refine", 0.96875): (59.77, 4.95, 46.09),
}


def _ms(fn):
    """Median ms; do_bench flushes L2 between reps and sizes its repeats from a first estimate."""
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def _dense(q, k, v):
    out = {}
    for name, backend in (("sdpa_flash_ms", SDPBackend.FLASH_ATTENTION),
                          ("sdpa_cudnn_ms", SDPBackend.CUDNN_ATTENTION)):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        try:
            out[name] = _ms(run)
        except RuntimeError as err:  # a backend can be unavailable for this build
            out[name] = None
            print(f"  {name}: unavailable ({err})", flush=True)
    return out


def _flex_runner(qc, kc, vc, indices, counts, nk):
    """Compiled flex_attention over our blocks; kv_indices padded to width Nk (one compile/shape)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, H, nq, kmax = indices.shape
    full = torch.zeros(B, H, nq, nk, dtype=torch.int32, device=qc.device)
    full[..., :kmax] = indices
    mask = BlockMask.from_kv_blocks(counts, full, BLOCK_SIZE=64, seq_lengths=(qc.shape[2], kc.shape[2]))
    compiled = _flex_runner.compiled
    opts = {"BLOCK_M": 64, "BLOCK_N": 64}
    return lambda: compiled(qc, kc, vc, block_mask=mask, kernel_options=opts)


_flex_runner.compiled = None


def _bench_sparse(name, grid, q, k, v, s, flex, dense_ms):
    layout = make_layout(grid, CHUNK)
    qc, kc, vc = (to_chunk_order(x, layout) for x in (q, k, v))
    indices, counts = gate(qc, kc, layout, layout, s, None)
    row = {"grid_name": name, "grid": grid, "tokens": layout.num_tokens, "sparsity": s,
           "blocks_per_query_chunk": int(counts[0, 0, 0])}
    row["gating_ms"] = _ms(lambda: gate(qc, kc, layout, layout, s, None))
    kernel = lambda: bsa_fwd_triton(qc, kc, vc, indices, counts, 64, 64)
    row["kernel_ms"] = _ms(kernel)
    row["total_ms"] = _ms(lambda: block_sparse_attention(q, k, v, grid, grid, sparsity=s))
    ours = kernel()
    if flex:
        run = _flex_runner(qc, kc, vc, indices, counts, layout.num_chunks)
        ref = run()
        row["flex_ms"] = _ms(run)
        row["rel_diff_vs_flex"] = ((ours.float() - ref.float()).norm() / ref.float().norm()).item()
    # 4·D FLOP per (query, key) pair (QKᵀ and P·V), over the 64×64 pairs of every kept block.
    flops = 4.0 * HEAD_DIM * 64 * 64 * float(counts.sum(dtype=torch.float64))
    row["kernel_eff_tflops"] = flops / row["kernel_ms"] * 1e-9
    row["total_eff_tflops"] = flops / row["total_ms"] * 1e-9
    cudnn = dense_ms.get("sdpa_cudnn_ms")
    if cudnn:
        row["total_over_ideal_cudnn"] = row["total_ms"] / ((1 - s) * cudnn)
        row["kernel_over_ideal_cudnn"] = row["kernel_ms"] / ((1 - s) * cudnn)
    official = OFFICIAL_H200.get((name, s))
    row["official_h200_total_gating_kernel_ms"] = official
    return row


def _sweep(q, k, v, grid, s):
    """Kernel ms for a few launch configs at one shape (input to the follow-up tuning issue)."""
    layout = make_layout(grid, CHUNK)
    qc, kc, vc = (to_chunk_order(x, layout) for x in (q, k, v))
    indices, counts = gate(qc, kc, layout, layout, s, None)
    out = {}
    for warps, stages in ((4, 2), (4, 3), (4, 4), (8, 3)):
        key = f"w{warps}s{stages}"
        try:
            out[key] = _ms(lambda w=warps, st=stages: bsa_fwd_triton(
                qc, kc, vc, indices, counts, 64, 64, num_warps=w, num_stages=st))
        except Exception as err:  # noqa: BLE001 — an unlaunchable config is a result, not a crash
            out[key] = f"failed: {type(err).__name__}"
    return out


def _print_table(rows, dense, card):
    print(f"\nBSA forward, {card}, B=1 heads=32 D=128 bf16, chunks 4x4x4, top-K (ms, median)")
    hdr = ("grid", "s", "K", "flash", "cuDNN", "flex", "gate", "kernel", "total", "eff TF/s",
           "tot/((1-s)cuDNN)")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    fmt = lambda x: "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))
    for r in rows:
        d = dense[r["grid_name"]]
        print("| " + " | ".join(fmt(x) for x in (
            r["grid_name"], r["sparsity"], r["blocks_per_query_chunk"], d.get("sdpa_flash_ms"),
            d.get("sdpa_cudnn_ms"), r.get("flex_ms"), r["gating_ms"], r["kernel_ms"], r["total_ms"],
            r["kernel_eff_tflops"], r.get("total_over_ideal_cudnn"))) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_bsa.json")
    ap.add_argument("--grids", default="480p,720p,refine")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--sweep-only", action="store_true", help="only the launch-config sweep")
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    result = {"card": card, "torch": torch.__version__, "triton": triton.__version__,
              "python": platform.python_version(), "heads": HEADS, "head_dim": HEAD_DIM,
              "dtype": "bfloat16", "chunk": CHUNK, "dense": {}, "rows": [], "sweep": {}}
    flex = not args.no_flex
    if flex:
        from torch.nn.attention.flex_attention import flex_attention
        _flex_runner.compiled = torch.compile(flex_attention, dynamic=False)
    for name in args.grids.split(","):
        grid = GRIDS[name]
        S = math.prod(grid)
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, HEADS, S, HEAD_DIM, device="cuda", dtype=torch.bfloat16,
                               generator=gen) for _ in range(3))
        if args.sweep_only:
            result["sweep"][f"{name}_s0.9375"] = _sweep(q, k, v, grid, 0.9375)
            print(f"{name} sweep: {result['sweep'][f'{name}_s0.9375']}", flush=True)
            continue
        t0 = time.time()
        result["dense"][name] = {} if args.no_dense else _dense(q, k, v)
        print(f"{name}: dense {result['dense'][name]} ({time.time() - t0:.0f}s)", flush=True)
        for s in SPARSITIES:
            t0 = time.time()
            row = _bench_sparse(name, grid, q, k, v, s, flex, result["dense"][name])
            result["rows"].append(row)
            print(f"  s={s}: {row} ({time.time() - t0:.0f}s)", flush=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
        if name == "720p":
            result["sweep"]["720p_s0.9375"] = _sweep(q, k, v, grid, 0.9375)
            print(f"  sweep: {result['sweep']}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.sweep_only:
        return
    _print_table(result["rows"], result["dense"], card)


if __name__ == "__main__":
    main()
