"""K and V into chunk order with k's chunk means, in one pass (Triton).

The raster path (kernels/op.py) needs K/V in chunk order for the forward's tensor-descriptor
loads and k's chunk means for gating. Reordering with torch copies and pooling the copy reads k
twice; this kernel reads each chunk's k and v rows once, writes them contiguous in chunk order and
writes k's mean (fp32 sum, one rounding to the input dtype, like ``pool_chunks_triton``).

Divisible grids only (the raster path's domain). Imports triton; kernels/op.py imports it lazily.
"""

import torch
import triton
import triton.language as tl

from .bsa_fwd_triton import _chunk_program


@triton.jit
def _reorder_pool_kernel(K, V, KC, VC, KP, stride_kb, stride_kh, stride_ks,
                         stride_vb, stride_vh, stride_vs, HEADS, NC, H, W, nh, nw,
                         CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
                         CHUNK_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    c, bh, b, h, slot, rows = _chunk_program(HEADS, H, W, nh, nw, CT, CH, CW, CHUNK_PAD)
    CHUNK: tl.constexpr = CT * CH * CW
    offs_d = tl.arange(0, HEAD_DIM)
    real = (slot < CHUNK)[:, None]
    k = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_ks + offs_d[None, :],
                mask=real, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vs + offs_d[None, :],
                mask=real, other=0.0)
    chunk_row = bh.to(tl.int64) * NC + c
    dst = (chunk_row * CHUNK + slot[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(KC + dst, k, mask=real)
    tl.store(VC + dst, v, mask=real)
    mean = tl.sum(k.to(tl.float32), 0) / CHUNK
    tl.store(KP + chunk_row * HEAD_DIM + offs_d, mean.to(KP.dtype.element_ty))


def chunk_order_kv_pooled(k, v, layout):
    """K and V in chunk order plus k's chunk means, reading k and v once.

    Args:
        k, v: ``[B, heads, S, D]`` in raster order of ``layout``'s grid (any strides with a unit
            last one, e.g. a transposed ``[B, S, heads, D]`` view), same shape.
        layout: a ``ChunkLayout`` whose grid is a multiple of its chunk.

    Returns:
        ``(kc, vc, k_pooled)``: contiguous ``[B, heads, S, D]`` in chunk order (as
        ``to_chunk_order`` returns them) and ``[B, heads, Nc, D]`` chunk means, in k's dtype.

    Raises:
        ValueError: a padded layout, mismatched shapes, or a non-unit last stride.
    """
    if layout.padded:
        raise ValueError(f"grid {layout.grid} is not a multiple of chunk {layout.chunk}")
    if k.shape != v.shape or k.shape[2] != layout.num_tokens:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must match the grid's "
                         f"{layout.num_tokens} tokens")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError(f"k and v need a unit last stride, got {k.stride()} / {v.stride()}")
    B, H, S, D = k.shape
    (_, gh, gw), (t, h, w) = layout.grid, layout.chunk
    nc = layout.num_chunks
    kc = torch.empty(B, H, S, D, dtype=k.dtype, device=k.device)
    vc = torch.empty_like(kc)
    k_pooled = torch.empty(B, H, nc, D, dtype=k.dtype, device=k.device)
    _reorder_pool_kernel[(nc, B * H)](
        k, v, kc, vc, k_pooled, k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), H, nc, gh, gw, gh // h, gw // w,
        CT=t, CH=h, CW=w, CHUNK_PAD=triton.next_power_of_2(layout.chunk_size), HEAD_DIM=D,
        num_warps=4)
    return kc, vc, k_pooled
