"""Where does the BSA kernel's time go? Loads, arithmetic, or the online-softmax bookkeeping.

At LongCat's grids (B=1, 32 heads, D=128, bf16, chunks 4×4×4, top-K on random q/k/v) this times
the production kernel beside diagnostic kernels that run the same grid over the same block lists
and the same TMA tile loads but leave one part out:

* ``loads``: K/V tiles loaded and summed (no dot, no softmax): the floor set by moving 32 KB of
  K/V per (query chunk, key block) pair from L2 into the SM;
* ``compute``: one K/V tile loaded once, then the full softmax step ``count`` times: the floor
  set by the arithmetic (two 64×64×128 dots, exp2, rescale) with no loads in the loop;
* ``pair_n``: two key chunks per step (two TMA loads, two dots, one softmax update over 128
  keys): halves the per-step rescale/max/sum work, loads unchanged;
* ``q128_shared``: two query chunks as one 128-row tile over ONE list (the first chunk's), 8
  warps: what sharing every K/V load between two chunks would give (only possible when their
  lists coincide);
* ``local_lists``: the production kernel over lists of neighbouring key chunks (co-running
  programs share blocks): the L2-locality best case;
* ``l2_ceiling``: ``loads`` with every program walking the same K blocks (all L2 hits).

Plus a device-to-device copy (HBM bandwidth) and the compiled kernels' registers, spills and
shared memory. ``--ncu`` runs a few kernels twice at the refine grid and exits (for an ncu session).

Usage (CUDA): python bench/bench_bsa_roofline.py --out roofline.json [--grids 480p,720p,refine]
"""

import argparse
import json
import platform
import subprocess
from pathlib import Path

import torch
import triton
import triton.language as tl
from _common import CHUNK, GRIDS, HEAD_DIM, ms, random_qkv
from longcat_pack.kernels.bsa_fwd_triton import (
    _LOG2E,
    _bsa_fwd_kernel,
    _chunk_base,
    _chunk_rows,
    _softmax_step,
    bsa_fwd_triton,
    bsa_fwd_triton_raster,
)
from longcat_pack.kernels.chunking import make_layout, to_chunk_order
from longcat_pack.kernels.gating import select_slabbed
from longcat_pack.kernels.gating_triton import pool_chunks_triton, topk_select_triton
from longcat_pack.kernels.reorder_triton import chunk_order_kv_pooled

SPARSITY = 0.9375
MODES = {"loads": 1, "compute": 2, "pair_n": 3, "raster_tma": 4}


@triton.jit
def _diag_kernel(Q, K, V, O, IDX, stride_qh, stride_qs, stride_oh, stride_os, stride_ih,
                 stride_iq, count, n_keys, qk_scale, qH, qW, q_nh, q_nw,
                 BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, MODE: tl.constexpr):
    """B = 1; q/o raster (4×4×4 chunks), K/V chunk-ordered [heads, n_keys, D] contiguous
    (MODE 4: K/V raster [heads, T·H·W, D], chunks loaded as 4×4×4 boxes of a 4-D descriptor)."""
    chunk, h = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs_m = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = _chunk_base(chunk, q_nh, q_nw, qH, qW, 4, 4, 4) + _chunk_rows(offs_m, qH, qW, 4, 4)
    q = tl.load(Q + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :])
    idx_ptr = IDX + h * stride_ih + chunk.to(tl.int64) * stride_iq
    k_desc = tl.make_tensor_descriptor(K + h * n_keys * HEAD_DIM, shape=[n_keys, HEAD_DIM],
                                       strides=[HEAD_DIM, 1], block_shape=[BLOCK, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(V + h * n_keys * HEAD_DIM, shape=[n_keys, HEAD_DIM],
                                       strides=[HEAD_DIM, 1], block_shape=[BLOCK, HEAD_DIM])
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    if MODE == 4:
        qT = n_keys // (qH * qW)
        k4 = tl.make_tensor_descriptor(K + h * n_keys * HEAD_DIM, shape=[qT, qH, qW, HEAD_DIM],
                                       strides=[qH * qW * HEAD_DIM, qW * HEAD_DIM, HEAD_DIM, 1],
                                       block_shape=[4, 4, 4, HEAD_DIM])
        v4 = tl.make_tensor_descriptor(V + h * n_keys * HEAD_DIM, shape=[qT, qH, qW, HEAD_DIM],
                                       strides=[qH * qW * HEAD_DIM, qW * HEAD_DIM, HEAD_DIM, 1],
                                       block_shape=[4, 4, 4, HEAD_DIM])
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.range(count):
            blk = tl.load(idx_ptr + i)
            t0 = (blk // (q_nh * q_nw)) * 4
            h0 = ((blk // q_nw) % q_nh) * 4
            w0 = (blk % q_nw) * 4
            k_t = tl.trans(tl.reshape(k4.load([t0, h0, w0, 0]), [BLOCK, HEAD_DIM]))
            v = tl.reshape(v4.load([t0, h0, w0, 0]), [BLOCK, HEAD_DIM])
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, k_t, v, qk_scale, offs_m, False)
    elif MODE == 1:
        for i in tl.range(count):
            row = (tl.load(idx_ptr + i) * BLOCK).to(tl.int32)
            acc += (k_desc.load([row, 0]) + v_desc.load([row, 0])).to(tl.float32)
    elif MODE == 2:
        row = (tl.load(idx_ptr) * BLOCK).to(tl.int32)
        k_t = tl.trans(k_desc.load([row, 0]))
        v = v_desc.load([row, 0])
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.range(count):
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, k_t, v, qk_scale, offs_m, False)
    else:
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.range(0, count, 2):
            second = i + 1 < count
            row0 = (tl.load(idx_ptr + i) * BLOCK).to(tl.int32)
            row1 = (tl.load(idx_ptr + tl.minimum(i + 1, count - 1)) * BLOCK).to(tl.int32)
            qk0 = tl.dot(q, tl.trans(k_desc.load([row0, 0])))
            qk1 = tl.dot(q, tl.trans(k_desc.load([row1, 0])))
            qk1 = tl.where(second, qk1, float("-inf"))
            m_new = tl.maximum(m_i, tl.maximum(tl.max(qk0, 1), tl.max(qk1, 1)) * qk_scale)
            p0 = tl.math.exp2(qk0 * qk_scale - m_new[:, None])
            p1 = tl.math.exp2(qk1 * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p0, 1) + tl.sum(p1, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p0.to(q.dtype), v_desc.load([row0, 0]), acc)
            acc = tl.dot(p1.to(q.dtype), v_desc.load([row1, 0]), acc)
            m_i = m_new
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    tl.store(O + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :], out)


def _diag(mode, q, kc, vc, indices, layout, stages=5):
    (_, gh, gw), nq = layout.grid, layout.num_chunks
    out = torch.empty_like(q)
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device=q.device))
    _diag_kernel[(nq, q.shape[1])](
        q, kc, vc, out, indices, q.stride(1), q.stride(2), out.stride(1), out.stride(2),
        indices.stride(1), indices.stride(2), indices.shape[-1], kc.shape[2],
        HEAD_DIM**-0.5 * _LOG2E, gh, gw, gh // 4, gw // 4,
        BLOCK=64, HEAD_DIM=HEAD_DIM, MODE=MODES[mode], num_warps=4, num_stages=stages)
    return out


def _inputs(grid):
    q, k, v = random_qkv(grid, torch.Generator(device="cuda").manual_seed(0))
    layout = make_layout(grid, CHUNK)
    kc, vc, kp = chunk_order_kv_pooled(k, v, layout)
    qp = pool_chunks_triton(q, layout)
    indices, counts = select_slabbed(qp, kp, SPARSITY, None, topk_select_triton)
    return q, k, v, kc, vc, layout, indices, counts


def _local_lists(indices, nk):
    """Each query chunk's list replaced by K consecutive key chunks starting near it."""
    nq, kk = indices.shape[2], indices.shape[3]
    start = (torch.arange(nq, device=indices.device) * nk // nq).clamp(max=nk - kk)
    lists = start[:, None] + torch.arange(kk, device=indices.device)
    return lists.to(torch.int32).expand_as(indices).contiguous()


def _kernels(q, k, v, kc, vc, layout, indices, counts):
    """name -> (callable, query rows per computed block) for every variant at one grid."""
    nk = layout.num_chunks
    same = torch.arange(indices.shape[3], device=q.device, dtype=torch.int32)
    same = same.expand_as(indices).contiguous()
    local = _local_lists(indices, nk)
    qc = to_chunk_order(q, layout)
    pair_idx = indices[:, :, ::2].contiguous()
    pair_cnt = counts[:, :, ::2].contiguous()
    prod = lambda idx, **kw: lambda: bsa_fwd_triton_raster(q, kc, vc, idx, counts, layout, layout,
                                                           kv_chunked=True, **kw)
    runs = {
        "full": (prod(indices), 64),
        "full_no_evict": (prod(indices, qo_evict=""), 64),
        "full_passes2": (prod(indices, kv_passes=2), 64),
        "full_passes3": (prod(indices, kv_passes=3), 64),
        "full_passes4": (prod(indices, kv_passes=4), 64),
        "full_passes6": (prod(indices, kv_passes=6), 64),
        "full_passes2_no_evict": (prod(indices, kv_passes=2, qo_evict=""), 64),
        "raster_tma": (lambda: _diag("raster_tma", q, k, v, indices, layout), 64),
        "full_s6": (prod(indices, num_stages=6), 64),
        "loads": (lambda: _diag("loads", q, kc, vc, indices, layout), 64),
        "compute": (lambda: _diag("compute", q, kc, vc, indices, layout), 64),
        "pair_n": (lambda: _diag("pair_n", q, kc, vc, indices, layout), 64),
        "local_lists": (prod(local), 64),
        "l2_ceiling": (lambda: _diag("loads", q, kc, vc, same, layout), 64),
    }
    for stages in (3, 4):
        runs[f"q128_shared_s{stages}"] = (lambda st=stages: bsa_fwd_triton(
            qc, kc, vc, pair_idx, pair_cnt, 128, 64, num_warps=8, num_stages=st), 128)
    return runs


def _compiled_resources():
    """Registers / spills / shared memory of every compiled variant of the two kernels."""
    out = []
    for fn in (_bsa_fwd_kernel, _diag_kernel):
        try:
            for cache in fn.device_caches.values():
                for compiled in cache[0].values():
                    c = compiled.metadata
                    out.append({"kernel": fn.__name__, "n_regs": compiled.n_regs,
                                "n_spills": compiled.n_spills, "shared_bytes": c.shared,
                                "num_warps": c.num_warps, "num_stages": c.num_stages})
        except (AttributeError, TypeError, IndexError) as err:
            out.append({"kernel": fn.__name__, "error": repr(err)})
    return out


def _gpu_state():
    """SM clock, its maximum, temperature and power draw (nvidia-smi), to compare machines."""
    query = "--query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
    try:
        return subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True,
                              text=True, check=False).stdout.strip()
    except OSError as err:
        return repr(err)


def _copy_tb_s():
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / (ms(lambda: y.copy_(x)) * 1e-3) / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bsa_roofline.json")
    ap.add_argument("--grids", default="480p,720p,refine")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved timings per variant")
    ap.add_argument("--ncu", action="store_true", help="run a few kernels twice at refine and exit")
    args = ap.parse_args()
    if args.ncu:
        runs = _kernels(*_inputs(GRIDS["refine"]))
        for name in ("full", "full_passes2", "raster_tma"):
            for _ in range(2):
                runs[name][0]()
        torch.cuda.synchronize()
        return
    props = torch.cuda.get_device_properties(0)
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "python": platform.python_version(),
              "sms": props.multi_processor_count, "l2_bytes": getattr(props, "L2_cache_size", None),
              "copy_tb_s": _copy_tb_s(), "sparsity": SPARSITY, "grids": {},
              "clocks_temp_power": _gpu_state()}
    print(f"{result['card']}: copy {result['copy_tb_s']:.2f} TB/s (read + write), "
          f"{result['clocks_temp_power']}", flush=True)
    for name in args.grids.split(","):
        q, k, v, kc, vc, layout, indices, counts = _inputs(GRIDS[name])
        runs = _kernels(q, k, v, kc, vc, layout, indices, counts)
        if args.only:
            runs = {key: runs[key] for key in ["full", *args.only.split(",")]}
        ref = runs["full"][0]().float()
        pairs = float(counts.sum(dtype=torch.float64))
        row = {"blocks_per_query_chunk": int(counts[0, 0, 0]), "pairs": pairs}
        for key in ("pair_n", "raster_tma", "full_passes2", "full_passes4", "full_no_evict"):
            if key not in runs:
                continue
            other = runs[key][0]().float()
            row[key + "_rel_diff"] = ((other - ref).norm() / ref.norm()).item()
        times = {key: [] for key in runs}
        for _ in range(args.reps):  # interleaved, so drift hits every variant alike
            for key, (fn, _rows) in runs.items():
                times[key].append(ms(fn))
        for key, (_fn, rows) in runs.items():
            best = min(times[key])
            loads = pairs / (rows // 64)  # a 128-row tile shares each load between two chunks
            row[key] = {"ms": times[key], "kv_tb_s": loads * 32768 / (best * 1e-3) / 1e12,
                        "eff_tflops": 4 * HEAD_DIM * 64 * 64 * pairs / (best * 1e-3) / 1e12}
        result["grids"][name] = row
        print(f"{name}: " + json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        del q, k, v, kc, vc, runs
        torch.cuda.empty_cache()
    result["compiled"] = _compiled_resources()
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| grid | variant | ms (each run) | K/V TB/s from L2 | eff TFLOP/s |")
    print("|---|---|---|---|---|")
    for name, row in result["grids"].items():
        for key, val in row.items():
            if isinstance(val, dict):
                print(f"| {name} | {key} | {' / '.join(f'{t:.2f}' for t in val['ms'])} | "
                      f"{val['kv_tb_s']:.2f} | {val['eff_tflops']:.0f} |")
    for c in result["compiled"]:
        print(c)


if __name__ == "__main__":
    main()
