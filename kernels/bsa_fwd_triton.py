"""Triton block-sparse flash-attention forward (CUDA; the interpreter on CPU for tests).

One program = one (batch·head, query chunk, row split). It loads its query tile once, walks its
list of selected key chunks (ascending, so programs of one head running side by side stream the
same K/V blocks through L2), and runs an exp2 online softmax with fp32 accumulation. Key slots
past a chunk's real-token count (padded grids) get -inf scores, i.e. zero probability.

The only module that imports triton; kernels/api.py imports it lazily and falls back to
kernels/reference.py (same signature) when it is missing or the inputs are unsupported.
"""

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


def unsupported_reason(q, k, v):
    """Why the Triton kernel cannot take these inputs, or None if it can."""
    if _interpreting():
        dtypes, where = _INTERPRETER_DTYPES, "the Triton interpreter"
    elif not q.is_cuda:
        return f"tensors are on {q.device.type}, the Triton kernel needs CUDA"
    else:
        dtypes, where = _CUDA_DTYPES, "CUDA"
    if q.dtype not in dtypes:
        return f"dtype {q.dtype} not supported by the Triton kernel on {where} (needs one of {dtypes})"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} not supported by the Triton kernel (needs one of {SUPPORTED_HEAD_DIMS})"
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        return "q, k, v differ in dtype or device"
    return None


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
def _bsa_fwd_inner(acc, l_i, m_i, q, k_base, v_base, idx_ptr, valid_ptr, count,
                   stride_ks, stride_vs, qk_scale,
                   CHUNK_K: tl.constexpr, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr,
                   HEAD_DIM: tl.constexpr, MASK_KEYS: tl.constexpr):
    """General path: each selected chunk in N_SUB tiles of BLOCK_N, masking padded key slots."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for i in range(count):
        blk = tl.load(idx_ptr + i).to(tl.int64)
        n_real = CHUNK_K
        if MASK_KEYS:
            n_real = tl.load(valid_ptr + blk)
        for j in tl.static_range(N_SUB):
            slot = j * BLOCK_N + offs_n
            rows = blk * CHUNK_K + slot
            real = slot < n_real
            if MASK_KEYS:
                k_t = tl.load(k_base + rows[None, :] * stride_ks + offs_d[:, None],
                              mask=real[None, :], other=0.0)
                v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :],
                            mask=real[:, None], other=0.0)
            else:
                k_t = tl.load(k_base + rows[None, :] * stride_ks + offs_d[:, None])
                v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :])
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, k_t, v, qk_scale, real, MASK_KEYS)
    return acc, l_i, m_i


@triton.jit
def _bsa_fwd_kernel(Q, K, V, O, IDX, CNT, VALID,
                    stride_qb, stride_qh, stride_qs,
                    stride_kb, stride_kh, stride_ks,
                    stride_vb, stride_vh, stride_vs,
                    stride_ob, stride_oh, stride_os,
                    stride_ib, stride_ih, stride_iq,
                    stride_cb, stride_ch,
                    HEADS, qk_scale,
                    CHUNK_Q: tl.constexpr, CHUNK_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, M_SPLIT: tl.constexpr,
                    BLOCK_N: tl.constexpr, N_SUB: tl.constexpr, HEAD_DIM: tl.constexpr,
                    MASK_Q: tl.constexpr, MASK_KEYS: tl.constexpr):
    # Query chunks vary fastest across programs, heads slowest: co-resident programs share a
    # head's K/V in L2.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HEADS).to(tl.int64)
    h = (pid_bh % HEADS).to(tl.int64)
    chunk = pid_m // M_SPLIT
    row0 = (pid_m % M_SPLIT) * BLOCK_M

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = chunk.to(tl.int64) * CHUNK_Q + offs_m
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :]
    if MASK_Q:
        q = tl.load(q_ptrs, mask=(offs_m < CHUNK_Q)[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs)

    count = tl.load(CNT + b * stride_cb + h * stride_ch + chunk)
    idx_ptr = IDX + b * stride_ib + h * stride_ih + chunk.to(tl.int64) * stride_iq
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    acc, l_i, m_i = _bsa_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, idx_ptr, VALID, count, stride_ks, stride_vs,
        qk_scale, CHUNK_K, BLOCK_N, N_SUB, HEAD_DIM, MASK_KEYS)
    # count ≥ 1 and every key chunk has a real token, so l_i > 0.
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    o_ptrs = O + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :]
    if MASK_Q:
        tl.store(o_ptrs, out, mask=(offs_m < CHUNK_Q)[:, None])
    else:
        tl.store(o_ptrs, out)


def _tile(chunk):
    """Tile edge for a chunk: a power of two ≥ 16 (tl.dot minimum), at most 128."""
    return min(128, max(16, triton.next_power_of_2(chunk)))


def _check(q, k, v, indices, counts, chunk_q, chunk_k, valid_k):
    reason = unsupported_reason(q, k, v)
    if reason is not None:
        raise ValueError(reason)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim, got stride {t.stride()}")
    B, H, Lq, _ = q.shape
    if Lq % chunk_q or k.shape[2] % chunk_k:
        raise ValueError(f"q/k lengths {Lq}/{k.shape[2]} are not multiples of chunk {chunk_q}/{chunk_k}")
    nq = Lq // chunk_q
    if indices.dtype != torch.int32 or indices.shape[:3] != (B, H, nq) or indices.stride(-1) != 1:
        raise ValueError(f"indices must be int32 [B, H, Nq, Kmax] with unit last stride, got "
                         f"{indices.dtype} {tuple(indices.shape)}")
    if counts.dtype != torch.int32 or counts.shape != (B, H, nq) or counts.stride(-1) != 1:
        raise ValueError(f"counts must be int32 [B, H, Nq], got {counts.dtype} {tuple(counts.shape)}")
    if valid_k is not None and (valid_k.dtype != torch.int32 or not valid_k.is_contiguous()):
        raise ValueError(f"valid_k must be contiguous int32, got {valid_k.dtype}")


def bsa_fwd_triton(q, k, v, indices, counts, chunk_q, chunk_k, valid_k=None, sm_scale=None,
                   num_warps=None, num_stages=None):
    """Block-sparse attention forward; same contract as ``reference.bsa_fwd_reference``.

    Args:
        q: ``[B, heads, Nq·chunk_q, D]`` in chunk order; k, v: ``[B, heads, Nk·chunk_k, D]``.
            D ∈ {64, 128}; bf16/fp16 on CUDA, fp16/fp32 under TRITON_INTERPRET=1; unit last stride.
        indices: int32 ``[B, heads, Nq, Kmax]`` key-chunk ids (ascending is fastest), unit last stride.
        counts: int32 ``[B, heads, Nq]``, each ≥ 1: leading entries of ``indices`` to use.
        chunk_q, chunk_k: tokens per query / key chunk (any size ≥ 1).
        valid_k: int32 ``[Nk]`` real tokens per key chunk (real ones first), None if all full.
        sm_scale: softmax scale, default 1/√D.
        num_warps, num_stages: launch overrides (benchmarks); default 4 warps per 64 query rows,
            4 stages (H200, 64-token chunks, D=128: 4 stages ≥ 3 stages, 8 warps 1.5× slower;
            bench/results/bsa_sweep_h200_2026-11-26.json).

    Returns:
        ``[B, heads, Nq·chunk_q, D]`` in ``q.dtype``.

    Raises:
        ValueError: unsupported device/dtype/head_dim/strides or malformed index tensors.
    """
    _check(q, k, v, indices, counts, chunk_q, chunk_k, valid_k)
    B, H, Lq, D = q.shape
    block_m, block_n = _tile(chunk_q), _tile(chunk_k)
    m_split, n_sub = triton.cdiv(chunk_q, block_m), triton.cdiv(chunk_k, block_n)
    mask_keys = valid_k is not None or block_n * n_sub != chunk_k
    if mask_keys and valid_k is None:
        valid_k = torch.full((k.shape[2] // chunk_k,), chunk_k, dtype=torch.int32, device=q.device)
    scale = D**-0.5 if sm_scale is None else sm_scale
    out = torch.empty_like(q)
    grid = (Lq // chunk_q * m_split, B * H)
    _bsa_fwd_kernel[grid](
        q, k, v, out, indices, counts, valid_k if mask_keys else counts,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        indices.stride(0), indices.stride(1), indices.stride(2),
        counts.stride(0), counts.stride(1),
        H, scale * _LOG2E,
        CHUNK_Q=chunk_q, CHUNK_K=chunk_k, BLOCK_M=block_m, M_SPLIT=m_split,
        BLOCK_N=block_n, N_SUB=n_sub, HEAD_DIM=D,
        MASK_Q=block_m * m_split != chunk_q, MASK_KEYS=mask_keys,
        num_warps=num_warps or (4 if block_m <= 64 else 8),
        num_stages=num_stages or 4,
    )
    return out
