"""Triton block-sparse flash-attention forward (CUDA; the interpreter on CPU for tests).

One program = one (batch·head, query chunk, row split). It loads its query tile once, walks its
list of selected key chunks (ascending, so programs of one head running side by side stream the
same K/V blocks through L2), and runs an exp2 online softmax with fp32 accumulation. Key slots
past a chunk's real-token count (padded grids) get -inf scores, i.e. zero probability.

K/V tiles of chunk-ordered, unpadded keys are loaded through tensor descriptors (TMA, the bulk
copy engine): 15–20 % faster than pointer loads on H200. Token addressing is geometric: a side (q or k/v) is a (T, H, W) grid cut into CT×CH×CW chunks,
and a chunk's rows are computed from its index, so the kernel reads q, k, v and writes o straight
in raster order (``bsa_fwd_triton_raster``, divisible grids: no reorder copies). Chunk-ordered
tensors are the special case grid (N, 1, C), chunk (1, 1, C) (``bsa_fwd_triton``).

Imports triton at module level, like the other ``*_triton.py`` modules (gating, reorder, block
ops); nothing imports them at package import: ``kernels/op.py`` and ``kernels/api.py`` import
them when a Triton path runs or is decided (``api.choose_backend``), and the torch reference
(kernels/reference.py) runs when triton is missing or the inputs are unsupported.
"""

import functools
import math
import os

import torch
import triton
import triton.language as tl

SUPPORTED_HEAD_DIMS = (64, 128)
# bf16 dots are wrong under TRITON_INTERPRET=1 (triton-lang/triton#11584), so the interpreter
# takes fp16/fp32 and real GPUs take bf16/fp16 (fp32 would silently run as tf32).
_CUDA_DTYPES = (torch.float16, torch.bfloat16)
_INTERPRETER_DTYPES = (torch.float16, torch.float32)
# exp(x) == exp2(x · log2(e)): the softmax runs in base 2, which maps to one MUFU.EX2 instruction.
_LOG2E = 1.4426950408889634


def _interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def unsupported_reason(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the Triton kernel cannot take q, k, v of ``dtype`` with ``head_dim`` features on
    ``device``, or None if it can (CPU tensors only under TRITON_INTERPRET=1, for tests)."""
    if device.type == "cuda":
        dtypes, where = _CUDA_DTYPES, "CUDA"
    elif _interpreting():
        dtypes, where = _INTERPRETER_DTYPES, "the Triton interpreter"
    else:
        return f"tensors are on {device.type}, the Triton kernel needs CUDA"
    if dtype not in dtypes:
        return f"dtype {dtype} not supported by the Triton kernel on {where} (needs one of {dtypes})"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {head_dim} not supported by the Triton kernel (needs one of {SUPPORTED_HEAD_DIMS})"
    return None


@triton.jit
def _chunk_base(c, nh, nw, H, W, CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr):
    """Row of the first token of chunk ``c`` (chunks raster over an (nt, nh, nw) chunk grid)."""
    c = c.to(tl.int64)
    return ((c // (nh * nw)) * CT * H + ((c // nw) % nh) * CH) * W + (c % nw) * CW


@triton.jit
def _chunk_rows(slot, H, W, CH: tl.constexpr, CW: tl.constexpr):
    """Row offset, from the chunk's first token, of each slot (slots raster over (t, h, w))."""
    return (slot // (CH * CW)).to(tl.int64) * H * W + ((slot // CW) % CH) * W + slot % CW


@triton.jit
def _chunk_program(HEADS, H, W, nh, nw, CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
                   CHUNK_PAD: tl.constexpr):
    """For a (chunk, batch·head) program: chunk c, b·heads+h, b and h (int64), the chunk's slots
    (padded to CHUNK_PAD) and their rows in an (·, H, W) raster grid."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    slot = tl.arange(0, CHUNK_PAD)
    rows = _chunk_base(c, nh, nw, H, W, CT, CH, CW) + _chunk_rows(slot, H, W, CH, CW)
    return c, bh, (bh // HEADS).to(tl.int64), (bh % HEADS).to(tl.int64), slot, rows


@triton.jit
def _softmax_step(acc, l_i, m_i, q, k_t, v, qk_scale, key_ok, MASKED: tl.constexpr):
    """One online-softmax update with a [HEAD_DIM, N] key tile and its [N, HEAD_DIM] values."""
    qk = tl.dot(q, k_t)
    if MASKED:
        qk = tl.where(key_ok[None, :], qk, float("-inf"))
    # Scores stay unscaled; the scale folds into the exp2 argument (one FMA per element).
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _bsa_fwd_inner(acc, l_i, m_i, q, k_base, v_base, idx_ptr, valid_ptr, start, stop,
                   stride_ks, stride_vs, qk_scale, kH, kW, k_nh, k_nw, n_keys,
                   K_CT: tl.constexpr, K_CH: tl.constexpr, K_CW: tl.constexpr,
                   BLOCK_N: tl.constexpr, N_SUB: tl.constexpr, HEAD_DIM: tl.constexpr,
                   MASK_KEYS: tl.constexpr, TMA: tl.constexpr):
    """Walk entries [start, stop) of the key-chunk list: each chunk in N_SUB tiles of BLOCK_N,
    masking padded key slots. One flat loop over (entry, tile) pairs, so the software pipeline
    holds num_stages tiles whatever N_SUB is (an unrolled tile loop multiplies its buffers: a
    256-token chunk needed 295–426 KB of shared memory on H200).

    TMA (chunk-ordered K/V, unmasked tiles): each tile is one tensor-descriptor load (bulk copy
    engine) instead of per-thread pointer loads.
    """
    CHUNK_K: tl.constexpr = K_CT * K_CH * K_CW
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if TMA:
        k_desc = tl.make_tensor_descriptor(k_base, shape=[n_keys, HEAD_DIM], strides=[stride_ks, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[n_keys, HEAD_DIM], strides=[stride_vs, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
    for t in tl.range(start * N_SUB, stop * N_SUB):
        blk = tl.load(idx_ptr + t // N_SUB)
        first = (t % N_SUB) * BLOCK_N  # the tile's first slot in its chunk
        if TMA:
            row = (blk * CHUNK_K + first).to(tl.int32)
            k_t = tl.trans(k_desc.load([row, 0]))
            v = v_desc.load([row, 0])
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, k_t, v, qk_scale, offs_n, False)
        else:
            slot = first + offs_n
            rows = _chunk_base(blk, k_nh, k_nw, kH, kW, K_CT, K_CH, K_CW) + _chunk_rows(
                slot, kH, kW, K_CH, K_CW)
            if MASK_KEYS:
                real = slot < tl.load(valid_ptr + blk)
                k_t = tl.load(k_base + rows[None, :] * stride_ks + offs_d[:, None],
                              mask=real[None, :], other=0.0)
                v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :],
                            mask=real[:, None], other=0.0)
            else:
                real = slot < CHUNK_K
                k_t = tl.load(k_base + rows[None, :] * stride_ks + offs_d[:, None])
                v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :])
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, k_t, v, qk_scale, real, MASK_KEYS)
    return acc, l_i, m_i


@triton.jit
def _bsa_fwd_kernel(Q, K, V, O, IDX, CNT, VALID, START, STOP, ACC_STATE, M_STATE, L_STATE,
                    stride_qb, stride_qh, stride_qs,
                    stride_kb, stride_kh, stride_ks,
                    stride_vb, stride_vh, stride_vs,
                    stride_ob, stride_oh, stride_os,
                    stride_ib, stride_ih, stride_iq,
                    stride_cb, stride_ch,
                    HEADS, qk_scale, qH, qW, q_nh, q_nw, kH, kW, k_nh, k_nw, n_keys,
                    Q_CT: tl.constexpr, Q_CH: tl.constexpr, Q_CW: tl.constexpr,
                    K_CT: tl.constexpr, K_CH: tl.constexpr, K_CW: tl.constexpr,
                    BLOCK_M: tl.constexpr, M_SPLIT: tl.constexpr,
                    BLOCK_N: tl.constexpr, N_SUB: tl.constexpr, HEAD_DIM: tl.constexpr,
                    MASK_Q: tl.constexpr, MASK_KEYS: tl.constexpr, TMA: tl.constexpr,
                    RESUME: tl.constexpr, FINAL: tl.constexpr, QO_EVICT: tl.constexpr):
    # Query chunks vary fastest across programs, heads slowest, so co-resident programs share one
    # head's K/V in L2 (heads fastest was 40–65 % slower on H200: docs/kernels.md, levers).
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b = (pid_bh // HEADS).to(tl.int64)
    h = (pid_bh % HEADS).to(tl.int64)
    chunk = pid_m // M_SPLIT
    CHUNK_Q: tl.constexpr = Q_CT * Q_CH * Q_CW

    offs_m = (pid_m % M_SPLIT) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = _chunk_base(chunk, q_nh, q_nw, qH, qW, Q_CT, Q_CH, Q_CW) + _chunk_rows(
        offs_m, qH, qW, Q_CH, Q_CW)
    row_ok = offs_m < CHUNK_Q
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :]
    o_ptrs = O + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :]
    # q and o pass through once: evict them first so K/V, read many times, stay in L2.
    if MASK_Q:
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0, eviction_policy=QO_EVICT)
    else:
        q = tl.load(q_ptrs, eviction_policy=QO_EVICT)

    list_at = b * stride_cb + h * stride_ch + chunk
    if FINAL and not RESUME:  # the whole list in one pass
        start = 0
        stop = tl.load(CNT + list_at)
    else:  # one key range of a multi-pass call: list entries [START, STOP)
        start = tl.load(START + list_at)
        stop = tl.load(STOP + list_at)
    idx_ptr = IDX + b * stride_ib + h * stride_ih + chunk.to(tl.int64) * stride_iq
    # Multi-pass calls keep each program's fp32 accumulator, row max and row sum between passes.
    state = (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc_state = ACC_STATE + state[:, None] * HEAD_DIM + offs_d[None, :]
    if RESUME:
        m_i = tl.load(M_STATE + state)
        l_i = tl.load(L_STATE + state)
        acc = tl.load(acc_state)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _bsa_fwd_inner(
        acc, l_i, m_i, q, K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh,
        idx_ptr, VALID, start, stop, stride_ks, stride_vs, qk_scale, kH, kW, k_nh, k_nw, n_keys,
        K_CT, K_CH, K_CW, BLOCK_N, N_SUB, HEAD_DIM, MASK_KEYS, TMA)
    if FINAL:
        # count ≥ 1 and every key chunk has a real token, so l_i > 0 after the last pass.
        out = (acc / l_i[:, None]).to(O.dtype.element_ty)
        if MASK_Q:
            tl.store(o_ptrs, out, mask=row_ok[:, None], eviction_policy=QO_EVICT)
        else:
            tl.store(o_ptrs, out, eviction_policy=QO_EVICT)
    else:
        tl.store(acc_state, acc, eviction_policy="evict_first")
        tl.store(M_STATE + state, m_i)
        tl.store(L_STATE + state, l_i)


def _tile(chunk):
    """Tile edge for a chunk: a power of two ≥ 16 (tl.dot minimum), at most 128."""
    return min(128, max(16, triton.next_power_of_2(chunk)))


def _check(q, k, v, indices, counts, nq, valid_k):
    reason = unsupported_reason(q.device, q.dtype, q.shape[-1])
    if reason is not None:
        raise ValueError(reason)
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        raise ValueError("q, k, v differ in dtype or device")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim, got stride {t.stride()}")
    B, H = q.shape[:2]
    if indices.dtype != torch.int32 or indices.shape[:3] != (B, H, nq) or indices.stride(-1) != 1:
        raise ValueError(f"indices must be int32 [B, H, Nq={nq}, Kmax] with unit last stride, got "
                         f"{indices.dtype} {tuple(indices.shape)}")
    if counts.dtype != torch.int32 or counts.shape != (B, H, nq) or counts.stride(-1) != 1:
        raise ValueError(f"counts must be int32 [B, H, Nq={nq}], got {counts.dtype} {tuple(counts.shape)}")
    if valid_k is not None and (valid_k.dtype != torch.int32 or not valid_k.is_contiguous()):
        raise ValueError(f"valid_k must be contiguous int32, got {valid_k.dtype}")


def _tma_ok(k, v, geo_k, chunk_k, mask_keys):
    """Whether K/V tiles can be descriptor loads: chunk-ordered, unmasked (tiles divide the
    chunk), 16-byte aligned base and row strides (the bulk copy engine's rule)."""
    if mask_keys or geo_k[:2] != (1, chunk_k) or geo_k[4:6] != (1, 1):
        return False
    return all(t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])
               for t in (k, v))


def auto_kv_passes(k):
    """Key-range passes for ``kv_passes``: 1 while one head's K and V fit comfortably in L2,
    else enough passes that each range's K/V fills at most half of it.

    H200 (60 MB L2), s = 0.9375: 43 MB per head (720p) is fastest in one pass (2 passes: +4 %);
    86 MB (refine) runs 67.3–70.1 → 65.0–65.8 ms in 3 passes (2 passes: no gain); docs/kernels.md,
    levers.
    """
    l2_bytes = _hopper_l2_bytes(k.device) if k.is_cuda else None
    if l2_bytes is None:
        return 1
    kv_bytes = 2 * k.shape[2] * k.shape[3] * k.element_size()
    return 1 if kv_bytes <= 0.75 * l2_bytes else math.ceil(kv_bytes / (0.5 * l2_bytes))


@functools.cache
def _hopper_l2_bytes(device):
    """L2 size of a Hopper-or-newer GPU, else None: passes were measured on Hopper only; where
    the arithmetic bounds the kernel (smaller GPUs) their state traffic would only cost."""
    props = torch.cuda.get_device_properties(device)
    return props.L2_cache_size if (props.major, props.minor) >= (9, 0) else None


def _pass_ranges(indices, counts, n_key_chunks, passes):
    """List positions where each of ``passes`` equal key ranges starts: int32 ``[passes + 1, B,
    heads, Nq]`` (first row 0, last row ``counts``). Lists must be ascending."""
    slot = torch.arange(indices.shape[-1], device=indices.device)
    used = slot < counts[..., None]
    cuts = [torch.zeros_like(counts)]
    for p in range(1, passes):
        bound = -(-p * n_key_chunks // passes)
        cuts.append(((indices < bound) & used).sum(-1, dtype=torch.int32))
    cuts.append(counts)
    return torch.stack(cuts)


def _launch(q, k, v, out, indices, counts, geo_q, geo_k, valid_k, sm_scale, num_warps,
            num_stages, tma=None, kv_passes=1, qo_evict="evict_first"):
    """geo_*: (H, W, nh, nw, CT, CH, CW) of each side; see the module docstring.

    tma: None = descriptor loads for K/V where ``_tma_ok``; True = required; False = off.
    kv_passes: split the key chunks into this many equal ranges, one launch each (lists must be
        ascending), so one range's K/V stays in L2; fp32 accumulators, row maxes and sums carry
        over between launches (4·D + 8 bytes per query row).
    qo_evict: L2 eviction policy of the q loads and o stores ("" = default).
    """
    if not (isinstance(kv_passes, int) and kv_passes >= 1):
        raise ValueError(f"kv_passes must be an int >= 1, got {kv_passes!r}")
    B, H, _, D = q.shape
    chunk_q, chunk_k = geo_q[4] * geo_q[5] * geo_q[6], geo_k[4] * geo_k[5] * geo_k[6]
    block_m, block_n = _tile(chunk_q), _tile(chunk_k)
    m_split, n_sub = triton.cdiv(chunk_q, block_m), triton.cdiv(chunk_k, block_n)
    mask_keys = valid_k is not None or block_n * n_sub != chunk_k
    if mask_keys and valid_k is None:
        valid_k = torch.full((k.shape[2] // chunk_k,), chunk_k, dtype=torch.int32, device=q.device)
    scale = D**-0.5 if sm_scale is None else sm_scale
    ok = _tma_ok(k, v, geo_k, chunk_k, mask_keys)
    if tma and not ok:
        raise ValueError("tma needs chunk-ordered, unpadded, 16-byte aligned K/V, tiles dividing the chunk")
    tma = ok if tma is None else tma
    if tma:  # on-device descriptors need a scratch allocator
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                     device=q.device))
    grid = (indices.shape[2] * m_split, B * H)
    counts = counts.contiguous()
    ranges = acc_state = m_state = l_state = counts  # one-pass launch: placeholders, never read
    if kv_passes > 1:
        ranges = _pass_ranges(indices, counts, k.shape[2] // chunk_k, kv_passes)
        m_state = torch.empty(B * H, grid[0] * block_m, dtype=torch.float32, device=q.device)
        l_state = torch.empty_like(m_state)
        acc_state = torch.empty(B * H, grid[0] * block_m, D, dtype=torch.float32, device=q.device)
    for p in range(kv_passes):
        _bsa_fwd_kernel[grid](
            q, k, v, out, indices, counts, valid_k if mask_keys else counts,
            ranges[p] if kv_passes > 1 else counts, ranges[p + 1] if kv_passes > 1 else counts,
            acc_state, m_state, l_state,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            indices.stride(0), indices.stride(1), indices.stride(2),
            counts.stride(0), counts.stride(1),
            H, scale * _LOG2E, *geo_q[:4], *geo_k[:4], k.shape[2],
            Q_CT=geo_q[4], Q_CH=geo_q[5], Q_CW=geo_q[6],
            K_CT=geo_k[4], K_CH=geo_k[5], K_CW=geo_k[6],
            BLOCK_M=block_m, M_SPLIT=m_split, BLOCK_N=block_n, N_SUB=n_sub, HEAD_DIM=D,
            MASK_Q=block_m * m_split != chunk_q, MASK_KEYS=mask_keys, TMA=tma,
            RESUME=p > 0, FINAL=p == kv_passes - 1, QO_EVICT=qo_evict,
            num_warps=num_warps or (4 if block_m <= 64 else 8),
            # H200, 720p/480p/refine at s=0.9375: descriptor loads best at 5 stages, pointer
            # loads at 4 (bench/results/bsa_sweep_h200_2026-11-26b.json).
            num_stages=num_stages or (5 if tma else 4),
        )
    return out


def bsa_fwd_triton(q, k, v, indices, counts, chunk_q, chunk_k, valid_k=None, sm_scale=None,
                   num_warps=None, num_stages=None, **launch):
    """Block-sparse attention forward on chunk-ordered tensors; same contract as
    ``reference.bsa_fwd_reference``.

    Args:
        q: ``[B, heads, Nq·chunk_q, D]`` in chunk order; k, v: ``[B, heads, Nk·chunk_k, D]``.
            D ∈ {64, 128}; bf16/fp16 on CUDA, fp16/fp32 under TRITON_INTERPRET=1; unit last stride.
        indices: int32 ``[B, heads, Nq, Kmax]`` key-chunk ids (ascending is fastest), unit last stride.
        counts: int32 ``[B, heads, Nq]``, each ≥ 1: leading entries of ``indices`` to use.
        chunk_q, chunk_k: tokens per query / key chunk (any size ≥ 1).
        valid_k: int32 ``[Nk]`` real tokens per key chunk (real ones first), None if all full.
        sm_scale: softmax scale, default 1/√D.
        num_warps, num_stages: launch overrides (benchmarks); default 4 warps per 64 query rows
            (8 warps 1.5× slower on H200), 5 stages with descriptor loads, else 4.
        launch: ``tma`` (None = K/V through tensor descriptors where possible: chunk-ordered,
            unpadded, aligned; True = required; False = pointer loads); ``kv_passes`` (default 1:
            key ranges run as separate launches, for K/V larger than L2; lists must then be
            ascending; see ``auto_kv_passes``); ``qo_evict`` (L2 policy of q loads / o stores,
            default "evict_first").

    Returns:
        ``[B, heads, Nq·chunk_q, D]`` in ``q.dtype``.

    Raises:
        ValueError: unsupported device/dtype/head_dim/strides or malformed index tensors.
    """
    _B, _H, Lq, _D = q.shape
    if Lq % chunk_q or k.shape[2] % chunk_k:
        raise ValueError(f"q/k lengths {Lq}/{k.shape[2]} are not multiples of chunk {chunk_q}/{chunk_k}")
    _check(q, k, v, indices, counts, Lq // chunk_q, valid_k)
    geo_q = (1, chunk_q, 1, 1, 1, 1, chunk_q)
    geo_k = (1, chunk_k, 1, 1, 1, 1, chunk_k)
    return _launch(q, k, v, torch.empty_like(q), indices, counts, geo_q, geo_k, valid_k, sm_scale,
                   num_warps, num_stages, **launch)


def _raster_geometry(layout, name):
    if layout.padded:
        raise ValueError(f"{name} grid {layout.grid} is not a multiple of chunk {layout.chunk}")
    (_, H, W), (t, h, w) = layout.grid, layout.chunk
    return (H, W, H // h, W // w, t, h, w)


def bsa_fwd_triton_raster(q, k, v, indices, counts, layout_q, layout_k, kv_chunked=False,
                          sm_scale=None, num_warps=None, num_stages=None, out=None, **launch):
    """Block-sparse attention forward reading q, k, v and writing o in raster token order.

    Args:
        q: ``[B, heads, Sq, D]``, Sq = ``layout_q.num_tokens``; k, v: ``[B, heads, Sk, D]``; any
            strides with a unit last one (e.g. a transposed ``[B, S, heads, D]`` view).
        kv_chunked: k and v are already in chunk order (kernels/chunking.py) instead of raster.
        indices, counts: as in ``bsa_fwd_triton``, chunks numbered as in kernels/chunking.py.
        layout_q, layout_k: ``ChunkLayout``s; grids must be multiples of their chunks.
        sm_scale, num_warps, num_stages, launch: as in ``bsa_fwd_triton``.
        out: None, or a ``[B, heads, Sq, D]`` view to write into (e.g. some heads of a larger
            output); unit last stride.

    Returns:
        ``[B, heads, Sq, D]`` in raster order, stored as ``[B, Sq, heads, D]`` (a transposed
        view), so ``out.transpose(1, 2).reshape(B, Sq, heads·D)`` is free; ``out`` when given.

    Raises:
        ValueError: padded layouts, token counts that do not match, or what ``bsa_fwd_triton`` rejects.
    """
    geo_q, geo_k = _raster_geometry(layout_q, "q"), _raster_geometry(layout_k, "k")
    if kv_chunked:
        C = layout_k.chunk_size
        geo_k = (1, C, 1, 1, 1, 1, C)
    if q.shape[2] != layout_q.num_tokens or k.shape[2] != layout_k.num_tokens:
        raise ValueError(f"q/k lengths {q.shape[2]}/{k.shape[2]} do not match grids "
                         f"{layout_q.grid}/{layout_k.grid}")
    _check(q, k, v, indices, counts, layout_q.num_chunks, None)
    B, H, S, D = q.shape
    if out is None:
        out = torch.empty(B, S, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with a unit last stride, got "
                         f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return _launch(q, k, v, out, indices, counts, geo_q, geo_k, None, sm_scale, num_warps,
                   num_stages, **launch)
