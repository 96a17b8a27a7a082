"""Triton gating for BSA: chunk mean-pooling straight from raster order, and a fused exact top-K.

Same selection as kernels/gating.py (official semantics, reference/longcat.md §5.4); faster and
leaner on CUDA:

* ``pool_chunks_triton`` reads each chunk's tokens at their raster rows (or chunk-order rows) and
  writes its mean (fp32 sum, one rounding to the input dtype, like ``torch.mean`` on half types),
  so gating needs no reordered copy of q and k.
* ``topk_select_triton`` picks the K highest scores of each row by a bitwise radix select on the
  float's order-preserving integer key (one pass per significant bit, no sort), then writes the
  selected column ids already ascending. Among scores exactly equal to the K-th largest it keeps
  the lowest ids (``torch.topk`` leaves that choice unspecified). Scores come in query-chunk slabs
  (kernels/gating.py ``select_slabbed``), so the full Nq×Nk matrix never exists.

Imports triton; kernels/api.py imports it lazily.
"""

import torch
import triton
import triton.language as tl

from .bsa_fwd_triton import _chunk_base, _chunk_rows


@triton.jit
def _pool_kernel(X, OUT, VALID, stride_xb, stride_xh, stride_xs, HEADS, NC, H, W, nh, nw,
                 CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CHUNK_PAD: tl.constexpr,
                 HEAD_DIM: tl.constexpr, HAS_VALID: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    CHUNK: tl.constexpr = CT * CH * CW
    slot = tl.arange(0, CHUNK_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = _chunk_base(c, nh, nw, H, W, CT, CH, CW) + _chunk_rows(slot, H, W, CH, CW)
    ptrs = X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xs + offs_d[None, :]
    x = tl.load(ptrs, mask=(slot < CHUNK)[:, None], other=0.0).to(tl.float32)
    n = CHUNK
    if HAS_VALID:  # padded slots are zero in chunk order, so the sum is over real tokens
        n = tl.load(VALID + c)
    mean = tl.sum(x, 0) / n
    tl.store(OUT + (bh.to(tl.int64) * NC + c) * HEAD_DIM + offs_d, mean.to(OUT.dtype.element_ty))


def pool_chunks_triton(x, layout, raster, valid=None):
    """Mean over each chunk's real tokens, ``[B, heads, Nc, D]`` in ``x.dtype``.

    Args:
        x: ``[B, heads, S, D]``, unit last stride: raster order (``raster=True``, layout not
            padded) or chunk order ``[B, heads, Nc·C, D]`` with zero padded slots.
        layout: the ``ChunkLayout`` of x's grid.
        raster: whether x is in raster order.
        valid: int32 ``[Nc]`` real tokens per chunk (chunk order only), or None if all full.
    """
    B, H, _, D = x.shape
    if raster:
        (_, gh, gw), (t, h, w) = layout.grid, layout.chunk
        geo = (gh, gw, gh // h, gw // w, t, h, w)
    else:
        C = layout.chunk_size
        geo = (1, C, 1, 1, 1, 1, C)
    nc = layout.num_chunks
    out = torch.empty(B, H, nc, D, dtype=x.dtype, device=x.device)
    _pool_kernel[(nc, B * H)](
        x, out, valid if valid is not None else out, x.stride(0), x.stride(1), x.stride(2),
        H, nc, *geo[:4], CT=geo[4], CH=geo[5], CW=geo[6],
        CHUNK_PAD=triton.next_power_of_2(layout.chunk_size), HEAD_DIM=D,
        HAS_VALID=valid is not None, num_warps=4)
    return out


@triton.jit
def _topk_kernel(SCORES, IDX, n_rows, row0, NQ, NK, K, ROWS: tl.constexpr,
                 NK_PAD: tl.constexpr, LOW_BIT: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col = tl.arange(0, NK_PAD)
    live = (r < n_rows)[:, None] & (col < NK)[None, :]
    s = tl.load(SCORES + (bh * n_rows + r[:, None]) * NK + col[None, :], mask=live, other=0.0)
    bits = s.to(tl.float32).to(tl.int32, bitcast=True)
    # Order-preserving integer key: magnitude for x ≥ 0, −magnitude for x < 0 (−0 == +0). Bits
    # below LOW_BIT are zero for every key (bf16: 16, fp16: 13), so the search skips them.
    key = tl.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    one = tl.full([ROWS], 1, tl.int32)
    sign = one << 31
    key = tl.where(live, key, sign[:, None])  # dead slots: below every real key (−inf is −0x7F800000)
    # Radix select of the K-th largest key, most significant bit first, on the unsigned image
    # u = key ^ sign (monotone): keep a bit when at least K keys are ≥ the candidate prefix.
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


_LOW_BIT = {torch.bfloat16: 16, torch.float16: 13, torch.float32: 0}


def topk_select_triton(scores, k, indices, row0, rows=None, num_warps=None):
    """Write the ascending ids of each row's ``k`` highest scores into ``indices``.

    Args:
        scores: ``[B, heads, R, Nk]`` contiguous, bf16/fp16/fp32 (one slab of query chunks).
        k: how many to keep, 1 ≤ k ≤ Nk.
        indices: int32 ``[B, heads, Nq, k]`` contiguous; rows ``row0 .. row0+R`` are written.
        row0: first query chunk of the slab.
        rows, num_warps: score rows per program and its warps (benchmarks; default from Nk).
    """
    B, H, R, nk = scores.shape
    if not 1 <= k <= nk:
        raise ValueError(f"k must be in [1, {nk}], got {k}")
    nk_pad = max(16, triton.next_power_of_2(nk))
    # One row per program, ≤ 4 warps up to 4096 keys: fastest on H200 (480p/720p/refine; more
    # rows per program means cross-warp reductions in each of the 16 passes).
    rows = rows or 1
    num_warps = num_warps or (2 if nk_pad <= 1024 else 4 if nk_pad <= 4096 else 8)
    _topk_kernel[(triton.cdiv(R, rows), B * H)](
        scores.contiguous(), indices, R, row0, indices.shape[2], nk, k, ROWS=rows, NK_PAD=nk_pad,
        LOW_BIT=_LOW_BIT[scores.dtype], num_warps=num_warps)
