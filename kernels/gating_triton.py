"""Triton gating for BSA: chunk mean-pooling straight from raster order, and a fused exact top-K.

Same selection as kernels/gating.py (official semantics); faster and
leaner on CUDA:

* ``pool_chunks_triton`` reads each chunk's tokens at their raster rows and writes its mean (fp32 sum, one rounding to the input dtype, like ``torch.mean`` on half types),
  so gating needs no reordered copy of q and k.
* ``topk_select_triton`` picks the K highest scores of each row by a bitwise radix select on the
  float's order-preserving integer key (one pass per significant bit, no sort; the last 15 bits
  count two keys per int32 subtraction), then writes the selected column ids already ascending
  from one packed prefix scan. Among scores exactly equal to the K-th largest it keeps the lowest
  ids (``torch.topk`` leaves that choice unspecified). Scores come in query-chunk slabs
  (kernels/gating.py ``select_slabbed``), so the full Nq×Nk matrix never exists.

Imports triton; kernels/api.py imports it lazily.
"""

import torch
import triton
import triton.language as tl

from .bsa_fwd_triton import _chunk_program


@triton.jit
def _pool_kernel(X, OUT, stride_xb, stride_xh, stride_xs, HEADS, NC, H, W, nh, nw,
                 CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CHUNK_PAD: tl.constexpr,
                 HEAD_DIM: tl.constexpr):
    c, bh, b, h, slot, rows = _chunk_program(HEADS, H, W, nh, nw, CT, CH, CW, CHUNK_PAD)
    CHUNK: tl.constexpr = CT * CH * CW
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xs + offs_d[None, :]
    x = tl.load(ptrs, mask=(slot < CHUNK)[:, None], other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / CHUNK
    tl.store(OUT + (bh.to(tl.int64) * NC + c) * HEAD_DIM + offs_d, mean.to(OUT.dtype.element_ty))


def pool_chunks_triton(x, layout):
    """Mean over each chunk, ``[B, heads, Nc, D]`` in ``x.dtype``, read from raster order.

    Args:
        x: ``[B, heads, S, D]`` in raster order of ``layout``'s grid, unit last stride (e.g. a
            transposed ``[B, S, heads, D]`` view).
        layout: a ``ChunkLayout`` whose grid is a multiple of its chunk.

    Raises:
        ValueError: a padded layout (padded grids pool in torch, kernels/gating.py).
    """
    if layout.padded:
        raise ValueError(f"grid {layout.grid} is not a multiple of chunk {layout.chunk}")
    B, H, _, D = x.shape
    (_, gh, gw), (t, h, w) = layout.grid, layout.chunk
    nc = layout.num_chunks
    out = torch.empty(B, H, nc, D, dtype=x.dtype, device=x.device)
    _pool_kernel[(nc, B * H)](
        x, out, x.stride(0), x.stride(1), x.stride(2), H, nc, gh, gw, gh // h, gw // w,
        CT=t, CH=h, CW=w, CHUNK_PAD=triton.next_power_of_2(layout.chunk_size), HEAD_DIM=D,
        num_warps=4)
    return out


@triton.jit
def _order_keys(ROW, col, NK):
    """uint32 key of each score, ordered like the scores (−0 == +0, NaN by its bits); 0 past NK,
    below every score (the smallest real key is 1)."""
    live = col < NK
    bits = tl.load(ROW + col, mask=live, other=0.0).to(tl.float32).to(tl.int32, bitcast=True)
    # x ≥ 0: bits + 2³¹; x < 0: 2³¹ − |bits| = −bits (mod 2³²), so −0 and +0 both give 2³¹.
    key = tl.where(bits < 0, -bits, bits ^ (-2147483647 - 1)).to(tl.uint32, bitcast=True)
    return tl.where(live, key, 0)


@triton.jit
def _run_keys(ROW, BASE: tl.constexpr, C: tl.constexpr, T: tl.constexpr, NK):
    """Keys ``[C, T]`` of one run: thread t holds columns BASE + t·C … BASE + t·C + C − 1, one
    vector load. 2-D, so every Triton version keeps C in the thread and spreads T over lanes."""
    return _order_keys(ROW, BASE + tl.arange(0, C)[:, None] + tl.arange(0, T)[None, :] * C, NK)


@triton.jit
def _part_keys(ROW, BASE: tl.constexpr, C: tl.constexpr, T: tl.constexpr, R: tl.constexpr, NK):
    """Keys ``[C, T, R]`` of R ∈ {1, 2, 4} runs, run r at BASE + r·C·T. Runs are joined in
    registers: as one 3-D load, Triton 3.6 would spread lanes over R and reduce through shared
    memory in every pass."""
    RUN: tl.constexpr = C * T
    if R == 1:
        keys = _run_keys(ROW, BASE, C, T, NK)[:, :, None]
    elif R == 2:
        keys = tl.join(_run_keys(ROW, BASE, C, T, NK), _run_keys(ROW, BASE + RUN, C, T, NK))
    else:
        lo = tl.join(_run_keys(ROW, BASE, C, T, NK), _run_keys(ROW, BASE + RUN, C, T, NK))
        hi = tl.join(_run_keys(ROW, BASE + 2 * RUN, C, T, NK),
                     _run_keys(ROW, BASE + 3 * RUN, C, T, NK))
        keys = tl.reshape(tl.permute(tl.join(lo, hi), (0, 1, 3, 2)), [C, T, 4])  # r = 2·hi + lo
    return keys


@triton.jit
def _columns(BASE: tl.constexpr, C: tl.constexpr, T: tl.constexpr, R: tl.constexpr):
    """Column ids ``[C, T, R]`` of the keys ``_part_keys`` loads."""
    return (BASE + tl.arange(0, C)[:, None, None] + tl.arange(0, T)[None, :, None] * C
            + tl.arange(0, R)[None, None, :] * (C * T))


@triton.jit
def _total(xa, xb):
    """Sum of two ``[C, T, R]`` parts: in-thread sums first, then one cross-thread reduction."""
    return tl.sum(tl.sum(tl.sum(xa, 2), 0) + tl.sum(tl.sum(xb, 2), 0), 0)


@triton.jit
def _pack_pairs(key, prefix, LOW_BIT: tl.constexpr):
    """Each key's next 15 bits below ``prefix`` (0 under it, 0x7FFF over its range), two keys per
    int32 in 16-bit lanes with the guard bits 15 and 31 set: ``[C // 2, T, R]``."""
    C: tl.constexpr = key.shape[0]
    T: tl.constexpr = key.shape[1]
    R: tl.constexpr = key.shape[2]
    low = tl.minimum((key - prefix) >> LOW_BIT, 0x7FFF)
    low = tl.where(key < prefix, 0, low).to(tl.int32, bitcast=True)
    pairs = tl.reshape(low, [2, C // 2, T, R])
    return tl.sum(pairs << (tl.arange(0, 2) * 16)[:, None, None, None], 0) | (-2147450880)


@triton.jit
def _kth_largest(ka, kb, K, LOW_BIT: tl.constexpr):
    """The K-th largest key: radix select, one bit per pass, highest bit first; a bit is kept when
    at least K keys are ≥ the candidate. The last 15 bits compare two keys per subtraction."""
    one = tl.full([], 1, tl.uint32)
    prefix = tl.full([], 0, tl.uint32)
    for bit in tl.static_range(31, LOW_BIT + 14, -1):
        cand = prefix | (one << bit)
        n_ge = _total((ka >= cand).to(tl.int32), (kb >= cand).to(tl.int32))
        prefix = tl.where(n_ge >= K, cand, prefix)
    wa = _pack_pairs(ka, prefix, LOW_BIT)
    wb = _pack_pairs(kb, prefix, LOW_BIT)
    low = tl.full([], 0, tl.int32)
    for bit in tl.static_range(14, -1, -1):
        c = low | (1 << bit)
        n = _total(_lanes_ge(wa, c), _lanes_ge(wb, c))
        low = tl.where((n & 0xFFFF) + (n >> 16) >= K, c, low)
    return prefix | (low.to(tl.uint32, bitcast=True) << LOW_BIT)


@triton.jit
def _lanes_ge(words, c):
    """Per word, (lane 0 ≥ c) + (lane 1 ≥ c) · 2¹⁶ for 1 ≤ c ≤ 0x7FFF.

    A lane holds 0x8000 + v; 0x8000 + v − c stays in [1, 0xFFFF], so it never borrows from the
    next lane, and its bit 15 is v ≥ c. Summed over a row the 16-bit fields hold at most Nk/2.
    """
    return ((words - (c | (c << 16))) >> 15) & 0x10001


@triton.jit
def _exclusive_scan(v):
    """Exclusive prefix sums of ``v`` ``[C, T, R]`` in column order (r, t, c), and its total."""
    run = tl.sum(v, 0)
    run_before = tl.cumsum(run, 0) - run
    part = tl.sum(run, 0)
    part_before = tl.cumsum(part, 0) - part
    before = tl.cumsum(v, 0) - v + (run_before + part_before[None, :])[None, :, :]
    return before, tl.sum(part, 0)


@triton.jit
def _flat(x):
    """``[C, T, R]`` → ``[R·C·T]`` with element i on thread i mod T, where it already is: the
    default layout of a scattered store, so pointers and masks are not reordered (Triton 3.6 does
    that through shared memory for a 3-D store)."""
    return tl.reshape(tl.permute(x, (2, 0, 1)), [x.shape[0] * x.shape[1] * x.shape[2]])


@triton.jit
def _store_kept(OUT, key, kth, before, need, col):
    """Write the ids of keys > kth and of the first ``need`` keys == kth at their ranks."""
    ties_before = before >> 16
    keep = (key > kth) | ((key == kth) & (ties_before < need))
    pos = (before & 0xFFFF) + tl.minimum(ties_before, need)
    tl.store(OUT + _flat(pos), _flat(col), mask=_flat(keep))


@triton.jit
def _topk_kernel(SCORES, IDX, n_rows, row0, NQ, NK_DIV, K, T: tl.constexpr, RA: tl.constexpr,
                 CA: tl.constexpr, RB: tl.constexpr, CB: tl.constexpr, VEC: tl.constexpr,
                 LOW_BIT: tl.constexpr):
    r = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    NK = NK_DIV * VEC  # known multiple of VEC: the loads of a run are whole vectors
    row = SCORES + tl.multiple_of((bh * n_rows + r) * NK, VEC)
    # Two parts, [CA, T, RA] then [CB, T, RB], hug Nk closer than one power-of-two tile.
    ka = _part_keys(row, 0, CA, T, RA, NK)
    kb = _part_keys(row, RA * CA * T, CB, T, RB, NK)
    kth = _kth_largest(ka, kb, K, LOW_BIT)
    # Keys above kth count in the low 16 bits, keys equal to it in the high 16: one scan for both.
    before_a, total_a = _exclusive_scan((ka > kth).to(tl.int32) + ((ka == kth).to(tl.int32) << 16))
    before_b, total_b = _exclusive_scan((kb > kth).to(tl.int32) + ((kb == kth).to(tl.int32) << 16))
    need = K - ((total_a + total_b) & 0xFFFF)  # ties to keep, lowest ids first
    out = IDX + (bh * NQ + row0 + r) * K
    _store_kept(out, ka, kth, before_a, need, _columns(0, CA, T, RA))
    _store_kept(out, kb, kth, before_b + total_a, need, _columns(RA * CA * T, CB, T, RB))


# Bits below LOW_BIT are zero in the key of every score of that dtype (bf16: 16, fp16: 13).
_LOW_BIT = {torch.bfloat16: 16, torch.float16: 13, torch.float32: 0}
MAX_TOPK_KEYS = 32767  # counts share an int32 as two signed 16-bit fields
_KEYS_PER_WARP = 32 * 64  # a thread holds at most two parts of 4 runs of 8 keys


def _default_warps(nk):
    """Warps by Nk as the previous kernel measured best on H200 (bench/bench_topk.py sweeps them),
    more where a thread would hold over 64 keys."""
    nk_pad = triton.next_power_of_2(nk)
    warps = 2 if nk_pad <= 1024 else 4 if nk_pad <= 4096 else 8
    while nk > warps * _KEYS_PER_WARP:
        warps *= 2
    return warps


def _parts(nk, threads):
    """``((RA, CA), (RB, CB))``: per-thread widths wa ≥ wb, powers of two, wa + wb ≥ Nk / threads.

    One power-of-two tile wastes up to half its slots (720p: 1320 keys in 2048); two parts waste
    at most a quarter (1320 in 1536). Widths above 8 become R runs of 8 (16-byte bf16 vectors).
    """
    e = max(2, -(-nk // threads))
    wa = 1 << (e.bit_length() - 1)
    if wa == e and e > 2:
        wa //= 2
    wb = max(2, triton.next_power_of_2(max(1, e - wa)))
    return tuple((w // min(w, 8), min(w, 8)) for w in (wa, wb))


def topk_select_triton(scores, k, indices, row0, num_warps=None):
    """Write the ascending ids of each row's ``k`` highest scores into ``indices``.

    Among scores equal to the k-th largest, the lowest ids are kept.

    Args:
        scores: ``[B, heads, R, Nk]`` bf16/fp16/fp32 (one slab of query chunks), Nk ≤ 32767.
        k: how many to keep, 1 ≤ k ≤ Nk.
        indices: int32 ``[B, heads, Nq, k]`` contiguous; rows ``row0 .. row0+R`` are written.
        row0: first query chunk of the slab.
        num_warps: warps per score row (benchmarks); default from Nk.
    """
    B, H, R, nk = scores.shape
    if scores.dtype not in _LOW_BIT:
        raise ValueError(f"scores must be bf16, fp16 or fp32, got {scores.dtype}")
    if not 1 <= k <= nk:
        raise ValueError(f"k must be in [1, {nk}], got {k}")
    if nk > MAX_TOPK_KEYS:
        raise ValueError(f"scores.shape[-1] must be at most {MAX_TOPK_KEYS}, got {nk}")
    num_warps = num_warps or _default_warps(nk)
    if nk > num_warps * _KEYS_PER_WARP:
        raise ValueError(f"num_warps must be at least Nk / {_KEYS_PER_WARP} = "
                         f"{nk / _KEYS_PER_WARP:.2f}, got {num_warps}")
    threads = 32 * num_warps
    (ra, ca), (rb, cb) = _parts(nk, threads)
    vec = min(8, nk & -nk)  # largest power of two dividing Nk: rows start on VEC-element bounds
    _topk_kernel[(R, B * H)](
        scores.contiguous(), indices, R, row0, indices.shape[2], nk // vec, k, T=threads,
        RA=ra, CA=ca, RB=rb, CB=cb, VEC=vec, LOW_BIT=_LOW_BIT[scores.dtype], num_warps=num_warps)
