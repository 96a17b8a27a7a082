"""How much faster is the fused top-K of kernels/gating_triton.py than the previous version?

Times ``topk_select_triton`` (radix select: one-bit passes on the high bits, two keys per int32
subtraction on the last 15 bits, one packed prefix scan, each thread holding runs of 8 adjacent
keys in two parts that hug Nk) against the kernel it replaced, copied here as
``_previous_topk_kernel`` (same code: 16 one-bit passes over a power-of-two row, two cumsums), on
random bf16 scores: B=1, 32 heads, K = (1 − 0.9375) · Nk.
Cases: 480p [1, 32, 624, 624], 720p [1, 32, 1320, 1320], refine [1, 32, 2640, 2640] (the shapes
of bench_bsa.py's gating parts), the T96 long grid (Nk 5280) as one ``select_slabbed`` slab
(``kernels.gating._slab_rows`` rows), and 720p with scores rounded to 8 values (ties at the K-th
value in nearly every row).

Every case first checks that the new indices equal the previous kernel's bitwise (written at
row0 = 1 of a larger tensor, row 0 untouched) at the default and at each swept warp count, and
that the selected scores are, as a multiset, those of ``torch.topk``. Then ``do_bench`` medians
(ms) of both, the new kernel at each warp count, CUDA-graph medians of both (no launch overhead),
a markdown table, and JSON with card and versions.

Usage (on a CUDA machine):
  python bench/bench_topk.py --out bench/results/topk_<card>_<date>.json [--warps 2,4,8]
"""

import argparse
import json
import platform
from pathlib import Path

import torch
import triton
import triton.language as tl
from _common import HEADS, ms
from longcat_pack.kernels.gating import _slab_rows, topk_count
from longcat_pack.kernels.gating_triton import (
    _KEYS_PER_WARP,
    _LOW_BIT,
    topk_select_triton,
)
from triton.testing import do_bench_cudagraph

SPARSITY = 0.9375
# name: (score rows or None for one select_slabbed slab, key chunks Nk, distinct values or None)
CASES = {"480p": (624, 624, None), "720p": (1320, 1320, None), "refine": (2640, 2640, None),
         "long_T96": (None, 5280, None), "720p_ties": (1320, 1320, 8)}


@triton.jit
def _previous_topk_kernel(SCORES, IDX, n_rows, row0, NQ, NK, K, ROWS: tl.constexpr,
                          NK_PAD: tl.constexpr, LOW_BIT: tl.constexpr):
    """The baseline: kernels/gating_triton.py ``_topk_kernel`` as of commit 6f9ac54 (same code)."""
    bh = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col = tl.arange(0, NK_PAD)
    live = (r < n_rows)[:, None] & (col < NK)[None, :]
    s = tl.load(SCORES + (bh * n_rows + r[:, None]) * NK + col[None, :], mask=live, other=0.0)
    bits = s.to(tl.float32).to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    one = tl.full([ROWS], 1, tl.int32)
    sign = one << 31
    key = tl.where(live, key, sign[:, None])
    prefix = tl.zeros([ROWS], tl.int32)
    for bit in tl.static_range(31, LOW_BIT - 1, -1):
        cand = prefix | (one << bit)
        n_ge = tl.sum((key >= (cand ^ sign)[:, None]).to(tl.int32), 1)
        prefix = tl.where(n_ge >= K, cand, prefix)
    kth = (prefix ^ sign)[:, None]
    above = key > kth
    need = K - tl.sum(above.to(tl.int32), 1)
    tie = key == kth
    keep = above | (tie & (tl.cumsum(tie.to(tl.int32), 1) <= need[:, None]))
    pos = tl.cumsum(keep.to(tl.int32), 1) - 1
    out = IDX + (bh * NQ + row0 + r[:, None]).to(tl.int64) * K + pos
    tl.store(out, tl.broadcast_to(col[None, :], (ROWS, NK_PAD)), mask=keep & live)


def _previous_topk_select(scores, k, indices, row0):
    """The baseline's host call with its defaults (one row per program, warps by Nk)."""
    B, H, R, nk = scores.shape
    nk_pad = max(16, triton.next_power_of_2(nk))
    num_warps = 2 if nk_pad <= 1024 else 4 if nk_pad <= 4096 else 8
    _previous_topk_kernel[(R, B * H)](
        scores.contiguous(), indices, R, row0, indices.shape[2], nk, k, ROWS=1, NK_PAD=nk_pad,
        LOW_BIT=_LOW_BIT[scores.dtype], num_warps=num_warps)


def _scores(rows, nk, levels, gen):
    """``[1, HEADS, rows, Nk]`` bf16; rows None: one slab as ``select_slabbed`` cuts bf16 scores."""
    rows = rows or _slab_rows(HEADS, nk, 2)
    s = torch.randn(1, HEADS, rows, nk, generator=gen, device="cuda")
    if levels:  # few distinct values: every row has ties at its K-th value
        s = (s * levels / 4).round().clamp(-levels // 2, levels // 2 - 1)
    return s.to(torch.bfloat16)


def _run(select, scores, k, row0=0, **launch):
    B, H, R, _ = scores.shape
    indices = torch.full((B, H, row0 + R, k), -1, dtype=torch.int32, device=scores.device)
    select(scores, k, indices, row0, **launch)
    return indices


def _check(scores, k, warps):
    """New == previous bitwise (at row0 = 1) for every warp count; scores multiset == torch.topk."""
    previous = _run(_previous_topk_select, scores, k, row0=1)
    for w in (None, *warps):
        new = _run(topk_select_triton, scores, k, row0=1, num_warps=w)
        if not torch.equal(new, previous):
            bad = (new != previous).any(-1).nonzero()[:4].tolist()
            raise SystemExit(f"num_warps={w}: indices differ from the previous kernel at {bad}")
    picked = torch.gather(scores, -1, previous[:, :, 1:].long()).float().sort(-1).values
    expect = torch.topk(scores, k, dim=-1).values.float().sort(-1).values
    if not torch.equal(picked, expect):
        raise SystemExit("selected scores differ from torch.topk's")
    ties = (scores == torch.topk(scores, k, dim=-1).values[..., -1:]).sum(-1)
    return {"equal_to_previous": True, "multiset_equal_to_torch_topk": True,
            "rows_with_ties_at_kth": int((ties > 1).sum())}


def _graph_ms(fn):
    return do_bench_cudagraph(fn, rep=200, return_mode="median")


def _bench_case(name, rows, nk, levels, warps, gen):
    warps = [w for w in warps if nk <= w * _KEYS_PER_WARP]  # at most 64 keys a thread
    scores = _scores(rows, nk, levels, gen)
    k = topk_count(SPARSITY, nk)
    row = {"case": name, "shape": list(scores.shape), "k": k, **_check(scores, k, warps)}
    indices = _run(topk_select_triton, scores, k)
    row["previous_ms"] = ms(lambda: _previous_topk_select(scores, k, indices, 0))
    row["new_ms"] = ms(lambda: topk_select_triton(scores, k, indices, 0))
    row["new_ms_by_warps"] = {
        w: ms(lambda w=w: topk_select_triton(scores, k, indices, 0, num_warps=w)) for w in warps}
    row["speedup"] = row["previous_ms"] / row["new_ms"]
    row["previous_graph_ms"] = _graph_ms(lambda: _previous_topk_select(scores, k, indices, 0))
    row["new_graph_ms"] = _graph_ms(lambda: topk_select_triton(scores, k, indices, 0))
    print(f"  {name}: {row}", flush=True)
    return row


def _print_table(rows, card, warps):
    print(f"\nCard: {card} · torch {torch.__version__} · triton {triton.__version__} · bf16, "
          f"{HEADS} heads, K = (1 − {SPARSITY})·Nk; do_bench medians (ms)\n")
    print("| case | scores shape | K | previous | new (default warps) | speedup | "
          + " | ".join(f"new, {w} warps" for w in warps) + " | CUDA graph: previous / new |")
    print("|---|---|---|---|---|---|" + "---|" * len(warps) + "---|")
    for r in rows:
        by_warps = r["new_ms_by_warps"]
        sweep = " | ".join(f"{by_warps[w]:.4f}" if w in by_warps else "–" for w in warps)
        print(f"| {r['case']} | {r['shape']} | {r['k']} | {r['previous_ms']:.4f} | "
              f"{r['new_ms']:.4f} | {r['speedup']:.2f}× | {sweep} | "
              f"{r['previous_graph_ms']:.4f} / {r['new_graph_ms']:.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_topk.json")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--warps", default="2,4,8", help="warp counts timed for the new kernel")
    args = ap.parse_args()
    warps = [int(w) for w in args.warps.split(",")]
    card = torch.cuda.get_device_name()
    result = {"card": card, "torch": torch.__version__, "triton": triton.__version__,
              "python": platform.python_version(), "heads": HEADS, "sparsity": SPARSITY,
              "dtype": "bfloat16", "rows": []}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name in args.cases.split(","):
        result["rows"].append(_bench_case(name, *CASES[name], warps, gen))
        Path(args.out).write_text(json.dumps(result, indent=1))
    _print_table(result["rows"], card, warps)


if __name__ == "__main__":
    main()
