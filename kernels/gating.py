"""BSA gating: which key chunks each query chunk attends to.

Official semantics (docs/kernels.md, API), per (batch, head, query chunk):

1. mean-pool q and k over each chunk (in the input dtype),
2. score = q̄ · k̄ᵀ (input dtype, no scale),
3. select
   * top-K: the K = floor((1 − sparsity) · Nk) highest scores;
   * CDF: softmax(score / √D), sorted descending, cumulative sum; keep the leading blocks whose
     cumulative mass is ≤ cdf_threshold (the crossing block is not kept);
   * both: the CDF count raised to at least the top-K count.

Deviations, each pinned by a test in tests/kernels/test_gating.py:

* K ≥ 1 in every mode (official can select 0 blocks and returns all-zero rows):
  ``test_at_least_one_block``.
* Padded grids: pooling averages real tokens only (``ChunkLayout.valid``): ``test_pool_real_tokens_only``.
* Scores are built and selected in slabs of query chunks (``select_slabbed``), so the Nq×Nk matrix
  never exists whole (T96 H44 W80: 1.8 GB bf16 for 32 heads, plus the CDF path's sort buffers).
* Each query chunk's list is returned sorted ascending by key-chunk index (official top-K returns
  score order), so neighbouring query chunks stream the same key blocks in the same order (L2
  reuse). The selected *set* is unchanged.

Imports only torch; must not import triton, the model package or ComfyUI.
"""

import torch


def pool_chunks(x_chunked, chunk_size, valid=None):
    """Mean over the real tokens of each chunk.

    Args:
        x_chunked: ``[B, heads, N·C, D]`` in chunk order, padded slots zero.
        chunk_size: C.
        valid: int32 ``[N]`` real tokens per chunk (all ≥ 1), or None when no chunk is padded.

    Returns:
        ``[B, heads, N, D]`` in ``x_chunked.dtype``.
    """
    B, H, L, D = x_chunked.shape
    blocks = x_chunked.view(B, H, L // chunk_size, chunk_size, D)
    if valid is None:
        return blocks.mean(dim=3)
    # Padded slots are zero, so the sum over the chunk is the sum over its real tokens; fp32
    # accumulation then one rounding, as torch.mean does for half types.
    total = blocks.sum(dim=3, dtype=torch.float32)
    return (total / valid.to(torch.float32)[:, None]).to(x_chunked.dtype)


def topk_count(sparsity, num_key_chunks):
    """K = floor((1 − sparsity) · Nk) as the official code computes it, but at least 1."""
    return max(1, int((1 - sparsity) * num_key_chunks))


def _cdf_counts(scores, cdf_threshold, head_dim):
    """Per-row CDF counts and the descending order they index, ``([B,H,Nq], [B,H,Nq,Nk])``."""
    weights = torch.softmax(scores * (1.0 / head_dim**0.5), dim=-1)
    sorted_w, order = torch.sort(weights, dim=-1, descending=True)
    cdf = torch.cumsum(sorted_w, dim=-1)
    # searchsorted(cdf, thr, right=True) on a non-decreasing row == number of entries ≤ thr.
    counts = (cdf <= cdf_threshold).sum(dim=-1)
    return counts, order


def select_blocks(scores, sparsity, cdf_threshold, head_dim):
    """Select key chunks per query chunk.

    Args:
        scores: ``[B, heads, Nq, Nk]`` unscaled q̄·k̄ᵀ in the input dtype (official: bf16).
        sparsity: float in [0, 1) or None (CDF only).
        cdf_threshold: float in (0, 1] or None (top-K only). Not both None.
        head_dim: D, for the CDF softmax scale 1/√D.

    Returns:
        ``(indices, counts)``: int32 ``[B, heads, Nq, Kmax]`` key-chunk ids, each row's first
        ``counts`` entries ascending and distinct (the rest repeat the row's last valid id, so any
        entry is a safe address); int32 ``[B, heads, Nq]`` counts, each in [1, Nk].
    """
    nk = scores.shape[-1]
    if cdf_threshold is None:
        k = topk_count(sparsity, nk)
        top = torch.topk(scores, k, dim=-1, sorted=False).indices
        indices = torch.sort(top, dim=-1).values.to(torch.int32)
        counts = torch.full(scores.shape[:-1], k, dtype=torch.int32, device=scores.device)
        return indices.contiguous(), counts
    counts, order = _cdf_counts(scores, cdf_threshold, head_dim)
    floor = 1 if sparsity is None else topk_count(sparsity, nk)
    counts = counts.clamp(min=floor)
    kmax = int(counts.max())
    order = order[..., :kmax]
    slot = torch.arange(kmax, device=scores.device)
    keep = slot < counts[..., None]
    # Unkept slots sort to the end (sentinel nk), then take the row's last kept id.
    ordered = torch.sort(torch.where(keep, order, torch.full_like(order, nk)), dim=-1).values
    last = ordered.gather(-1, (counts[..., None] - 1).long())
    indices = torch.where(keep, ordered, last).to(torch.int32)
    return indices.contiguous(), counts.to(torch.int32)


# Working-set budget of one slab of query chunks in ``select_slabbed``: the scores plus what the
# selection builds from them (CDF: fp32 softmax, sorted copy, int64 order, cumsum ≈ 24 B/score).
SLAB_BYTES = 256 * 1024 * 1024


def _slab_rows(batch_heads, nk, bytes_per_score):
    return max(1, SLAB_BYTES // (batch_heads * nk * bytes_per_score))


def pad_width(indices, width):
    """Widen ``[..., k]`` to ``[..., width]`` by repeating the last column (a safe address)."""
    extra = width - indices.shape[-1]
    if extra == 0:
        return indices
    return torch.cat([indices, indices[..., -1:].expand(*indices.shape[:-1], extra)], dim=-1)


def select_slabbed(q_pooled, k_pooled, sparsity, cdf_threshold, topk_select=None):
    """Score and select slab by slab of query chunks: peak memory O(slab · Nk), not O(Nq · Nk).

    Args:
        q_pooled, k_pooled: ``[B, heads, Nq, D]`` / ``[B, heads, Nk, D]`` from ``pool_chunks``.
        sparsity, cdf_threshold: as in ``select_blocks``.
        topk_select: optional fused top-K ``f(scores, k, indices, row0)`` that writes ascending
            ids of a slab's rows into ``indices`` (kernels/gating_triton.py); top-K mode only.

    Returns:
        ``(indices, counts)`` as ``select_blocks`` returns them for the whole score matrix.
    """
    B, H, nq, D = q_pooled.shape
    nk = k_pooled.shape[2]
    k_t = k_pooled.transpose(-1, -2)
    if cdf_threshold is None and topk_select is not None:
        k = topk_count(sparsity, nk)
        indices = torch.empty(B, H, nq, k, dtype=torch.int32, device=q_pooled.device)
        step = _slab_rows(B * H, nk, q_pooled.element_size())
        for start in range(0, nq, step):
            topk_select(torch.matmul(q_pooled[:, :, start:start + step], k_t), k, indices, start)
        return indices, torch.full((B, H, nq), k, dtype=torch.int32, device=q_pooled.device)
    step = _slab_rows(B * H, nk, 24)
    parts = [select_blocks(torch.matmul(q_pooled[:, :, s:s + step], k_t), sparsity, cdf_threshold, D)
             for s in range(0, nq, step)]
    kmax = max(p[0].shape[-1] for p in parts)
    indices = torch.cat([pad_width(p[0], kmax) for p in parts], dim=2)
    return indices.contiguous(), torch.cat([p[1] for p in parts], dim=2)


def gate(q_chunked, k_chunked, layout_q, layout_k, sparsity, cdf_threshold, topk_select=None):
    """Pool, score and select in one call; see ``pool_chunks`` and ``select_slabbed``.

    ``layout_q`` / ``layout_k`` are the ``ChunkLayout``s the inputs were reordered with.
    """
    q_pooled = _pool(q_chunked, layout_q)
    k_pooled = _pool(k_chunked, layout_k)
    return select_slabbed(q_pooled, k_pooled, sparsity, cdf_threshold, topk_select)


def _pool(x_chunked, layout):
    valid = layout.valid(x_chunked.device) if layout.padded else None
    return pool_chunks(x_chunked, layout.chunk_size, valid)
