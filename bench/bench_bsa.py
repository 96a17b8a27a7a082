"""How fast is our BSA forward against dense SDPA and FlexAttention at LongCat's grids?

For each grid and sparsity (B=1, 32 heads, D=128, bf16, chunks 4×4×4, top-K gating, random
normal q/k/v in raster order) this times, with ``triton.testing.do_bench`` medians:
  * dense SDPA, flash backend and cuDNN backend;
  * FlexAttention (torch.compile'd) over exactly our selected 64-token blocks, on chunk-ordered
    inputs (gating and reorders excluded, like the kernel-only number);
  * ours, in the public call's parts: K/V copied into chunk order with k's chunk means (one
    Triton pass; the torch copies it replaced beside it), gating (q pooled from raster order +
    slabbed scores + fused top-K), the raster kernel alone (its automatic key-range passes), and
    the whole public call, with the call's peak VRAM;
  * launch variants of the kernel at 720p, s=0.9375 (warps / stages, raster or chunk-ordered
    K/V, pointer or descriptor loads) and the long-grid check (T96 H44 W80: whole call, time and
    peak VRAM).
It prints a table and writes JSON (card, versions, shapes, every number).

Usage (on a CUDA machine):
  python bench/bench_bsa.py --out results.json [--grids 480p,720p,refine] [--sparsities 0.9375]
      [--no-flex] [--dense cudnn|all|none] [--long]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from _common import CHUNK, GRIDS, HEAD_DIM, HEADS, ms, peak_mb, random_qkv
from longcat_pack.kernels import block_sparse_attention
from longcat_pack.kernels.bsa_fwd_triton import auto_kv_passes, bsa_fwd_triton_raster
from longcat_pack.kernels.chunking import make_layout, to_chunk_order
from longcat_pack.kernels.gating import select_slabbed
from longcat_pack.kernels.gating_triton import pool_chunks_triton, topk_select_triton
from longcat_pack.kernels.reorder_triton import chunk_order_kv_pooled
from torch.nn.attention import SDPBackend, sdpa_kernel

SPARSITIES = (0.875, 0.9375, 0.96875)
# Official LongCat BSA in an earlier H200 run (same inputs and method): total, gating, kernel ms.
OFFICIAL_H200 = {
    ("480p", 0.875): (11.24, 0.96, 8.50), ("480p", 0.9375): (7.23, 0.96, 4.34),
    ("480p", 0.96875): (5.20, 0.92, 2.23), ("720p", 0.875): (46.90, 2.44, 40.68),
    ("720p", 0.9375): (26.31, 2.03, 20.49), ("720p", 0.96875): (16.57, 2.02, 10.49),
    ("refine", 0.9375): (118.41, 5.81, 97.03), ("refine", 0.96875): (59.77, 4.95, 46.09),
}


def _dense(q, k, v, which):
    out = {}
    backends = (("sdpa_flash_ms", SDPBackend.FLASH_ATTENTION),
                ("sdpa_cudnn_ms", SDPBackend.CUDNN_ATTENTION))
    for name, backend in backends[1:] if which == "cudnn" else backends:
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        try:
            out[name] = ms(run)
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


def _gate_ours(q, k_pooled, layout, s):
    """The public call's gating after the K/V copy: q pooled from raster order, scores, top-K."""
    qp = pool_chunks_triton(q, layout)
    return select_slabbed(qp, k_pooled, s, None, topk_select_triton)


def _gate_raster(q, k, layout, s):
    qp, kp = pool_chunks_triton(q, layout), pool_chunks_triton(k, layout)
    return select_slabbed(qp, kp, s, None, topk_select_triton)


def _bench_sparse(name, grid, q, k, v, s, flex, dense_ms):
    layout = make_layout(grid, CHUNK)
    kc, vc, kp = chunk_order_kv_pooled(k, v, layout)
    indices, counts = _gate_ours(q, kp, layout, s)
    passes = auto_kv_passes(kc)
    row = {"grid_name": name, "grid": grid, "tokens": layout.num_tokens, "sparsity": s,
           "blocks_per_query_chunk": int(counts[0, 0, 0]), "kv_passes": passes}
    row["kv_copy_pool_ms"] = ms(lambda: chunk_order_kv_pooled(k, v, layout))
    row["torch_kv_copy_ms"] = ms(lambda: (to_chunk_order(k, layout), to_chunk_order(v, layout)))
    row["gating_ms"] = ms(lambda: _gate_ours(q, kp, layout, s))
    row["gating_peak_mb"] = peak_mb(lambda: _gate_ours(q, kp, layout, s))
    kernel = lambda: bsa_fwd_triton_raster(q, kc, vc, indices, counts, layout, layout,
                                           kv_chunked=True, kv_passes=passes)
    row["kernel_ms"] = ms(kernel)
    call = lambda: block_sparse_attention(q, k, v, grid, grid, sparsity=s)
    row["total_ms"] = ms(call)
    row["total_peak_mb"] = peak_mb(call)
    if flex:
        qc = to_chunk_order(q, layout)
        run = _flex_runner(qc, kc, vc, indices, counts, layout.num_chunks)
        ref = run()
        row["flex_ms"] = ms(run)
        ours = to_chunk_order(kernel(), layout)
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


VARIANTS = {  # kernel launch variants timed at one shape (the levers table in docs/kernels.md)
    # K/V read in raster order (no reorder at all)
    "raster_w4s4": ("raster", {"num_warps": 4, "num_stages": 4}),
    "raster_w4s5": ("raster", {"num_warps": 4, "num_stages": 5}),
    "raster_w4s6": ("raster", {"num_warps": 4, "num_stages": 6}),
    "raster_w8s3": ("raster", {"num_warps": 8, "num_stages": 3}),
    # q/o raster, K/V chunk-ordered (reordered once per call): pointer loads or TMA
    "kvchunk_w4s3": ("chunk", {"num_warps": 4, "num_stages": 3, "tma": False}),
    "kvchunk_w4s4": ("chunk", {"num_warps": 4, "num_stages": 4, "tma": False}),
    "kvchunk_w4s5": ("chunk", {"num_warps": 4, "num_stages": 5, "tma": False}),
    "kvchunk_tma_w4s2": ("chunk", {"num_warps": 4, "num_stages": 2, "tma": True}),
    "kvchunk_tma_w4s3": ("chunk", {"num_warps": 4, "num_stages": 3, "tma": True}),
    "kvchunk_tma_w4s4": ("chunk", {"num_warps": 4, "num_stages": 4, "tma": True}),
    "kvchunk_tma_w4s5": ("chunk", {"num_warps": 4, "num_stages": 5, "tma": True}),
}


def _try_ms(fn):
    try:
        return ms(fn)
    except Exception as err:  # noqa: BLE001 — an unlaunchable variant is a result, not a crash
        return f"failed: {type(err).__name__}: {str(err)[:200]}"


def _gating_parts(q, k, layout, s):
    qp, kp = pool_chunks_triton(q, layout), pool_chunks_triton(k, layout)
    out = {"pool_q_and_k": ms(lambda: (pool_chunks_triton(q, layout),
                                       pool_chunks_triton(k, layout)))}
    scores = qp @ kp.transpose(-1, -2)
    kk = max(1, int((1 - s) * scores.shape[-1]))
    idx = torch.empty(*scores.shape[:3], kk, dtype=torch.int32, device=q.device)
    out["scores_matmul"] = ms(lambda: qp @ kp.transpose(-1, -2))
    out["torch_topk_sort"] = ms(lambda: torch.sort(torch.topk(scores, kk, dim=-1).indices, -1))
    for warps in (2, 4, 8):
        out[f"topk_w{warps}"] = ms(lambda w=warps: topk_select_triton(scores, kk, idx, 0,
                                                                     num_warps=w))
    return out


def _sweep(q, k, v, grid, s):
    """Kernel ms per launch variant and the public call's ms at one shape, twice interleaved
    (noise), plus gating parts. ``call_raster`` is the public call (its raster path: q/o raster,
    K/V copied to chunk order, descriptor loads, automatic key-range passes)."""
    layout = make_layout(grid, CHUNK)
    indices, counts = _gate_raster(q, k, layout, s)
    kc, vc = to_chunk_order(k, layout), to_chunk_order(v, layout)
    out = {}
    for rep in ("", "_again"):
        for key, (kv, kw) in VARIANTS.items():
            kk, vv = (kc, vc) if kv == "chunk" else (k, v)
            out[key + rep] = _try_ms(lambda kw=kw, kk=kk, vv=vv, kv=kv: bsa_fwd_triton_raster(
                q, kk, vv, indices, counts, layout, layout, kv_chunked=kv == "chunk", **kw))
        out["call_raster" + rep] = ms(lambda: block_sparse_attention(q, k, v, grid, grid, sparsity=s))
        out["reorder_k_and_v" + rep] = ms(lambda: (to_chunk_order(k, layout), to_chunk_order(v, layout)))
    out["gating_parts"] = _gating_parts(q, k, layout, s)
    return out


def _long_grid(s=0.9375):
    """T96 H44 W80 (337,920 tokens): whole call and gating alone, time and peak VRAM."""
    grid = GRIDS["long"]
    layout = make_layout(grid, CHUNK)
    q, k, v = random_qkv(grid)
    _, _, kp = chunk_order_kv_pooled(k, v, layout)
    call = lambda: block_sparse_attention(q, k, v, grid, grid, sparsity=s)
    res = {"grid": grid, "tokens": layout.num_tokens, "sparsity": s,
           "inputs_mb": 3 * q.numel() * 2 / 2**20,
           "gating_ms": ms(lambda: _gate_ours(q, kp, layout, s)),
           "gating_peak_mb": peak_mb(lambda: _gate_ours(q, kp, layout, s)),
           "total_peak_mb": peak_mb(call), "total_ms": ms(call),
           "full_score_matrix_mb": HEADS * layout.num_chunks ** 2 * 2 / 2**20}
    res["process_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def _print_table(rows, dense, card):
    print(f"\nBSA forward, {card}, B=1 heads=32 D=128 bf16, chunks 4x4x4, top-K (ms, median)")
    hdr = ("grid", "s", "K", "cuDNN", "flex", "K/V copy+pool", "gate", "kernel", "passes", "total",
           "peak MB", "eff TF/s", "tot/((1-s)cuDNN)", "official")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    fmt = lambda x: "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))
    for r in rows:
        d = dense[r["grid_name"]]
        print("| " + " | ".join(fmt(x) for x in (
            r["grid_name"], r["sparsity"], r["blocks_per_query_chunk"], d.get("sdpa_cudnn_ms"),
            r.get("flex_ms"), r["kv_copy_pool_ms"], r["gating_ms"], r["kernel_ms"], r["kv_passes"],
            r["total_ms"], r["total_peak_mb"], r["kernel_eff_tflops"], r.get("total_over_ideal_cudnn"),
            r["official_h200_total_gating_kernel_ms"])) + " |")


def _bench_grid(name, args, flex, result):
    grid = GRIDS[name]
    q, k, v = random_qkv(grid, torch.Generator(device="cuda").manual_seed(0))
    if args.sweep_only or (args.sweep and name == "720p"):
        result["sweep"][f"{name}_s0.9375"] = _sweep(q, k, v, grid, 0.9375)
        print(f"{name} sweep: {result['sweep'][f'{name}_s0.9375']}", flush=True)
        if args.sweep_only:
            return
    t0 = time.time()
    result["dense"][name] = {} if args.dense == "none" else _dense(q, k, v, args.dense)
    print(f"{name}: dense {result['dense'][name]} ({time.time() - t0:.0f}s)", flush=True)
    for s in (float(x) for x in args.sparsities.split(",")):
        t0 = time.time()
        row = _bench_sparse(name, grid, q, k, v, s, flex, result["dense"][name])
        result["rows"].append(row)
        print(f"  s={s}: {row} ({time.time() - t0:.0f}s)", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_bsa.json")
    ap.add_argument("--grids", default="480p,720p,refine")
    ap.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--dense", default="all", choices=("all", "cudnn", "none"))
    ap.add_argument("--sweep", action="store_true", help="launch-variant sweep at 720p")
    ap.add_argument("--sweep-only", action="store_true", help="only the launch-variant sweep")
    ap.add_argument("--long", action="store_true", help="also the T96 H44 W80 whole call")
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
        _bench_grid(name, args, flex, result)
        torch.cuda.empty_cache()
    if args.long:
        result["long"] = _long_grid()
        print(f"long grid: {result['long']}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    _print_table(result["rows"], result["dense"], card)


if __name__ == "__main__":
    main()
