"""The BSA forward as a ``torch.library`` custom op, ``longcat_bsa::forward``, with its fake.

``torch.compile`` (dynamo, AOT autograd, inductor) treats the op as one opaque node: the
data-dependent parts — gating, ragged block lists, Triton launches, the choice between the raster
and the padded path — run only inside the op's real implementation, and the fake below gives the
tracer the output shapes, dtypes and strides without running anything. Inputs are tensors plus
static parameters (grids, chunks, sparsity, CDF threshold, resolved backend); outputs are tensors
only, so no Python number crosses the graph boundary.

Imports only torch and sibling kernel modules (triton lazily, through them); must not import the
model package or ComfyUI.
"""

import torch

from .chunking import from_chunk_order, make_layout, to_chunk_order
from .gating import pad_width, gate, select_slabbed
from .reference import bsa_fwd_reference

OP_NAME = "longcat_bsa::forward"


# The raster path's own buffers per call (K/V copies in chunk order, the key-range passes' fp32
# state) are bounded by running the heads in groups whose buffers stay under this many bytes
# (refine, 32 heads: 2.6 GiB of fp32 state alone in one call → 4 groups of 8). Heads are
# independent in gating and attention, so the groups give the same result.
HEAD_GROUP_BYTES = 1 << 30


def head_group_size(batch, heads, q_tokens, k_tokens, head_dim, itemsize):
    """Heads per group: the largest divisor of ``heads`` whose buffers fit ``HEAD_GROUP_BYTES``."""
    per_head = batch * head_dim * (2 * k_tokens * itemsize + 4 * q_tokens)
    fitting = [d for d in range(1, heads + 1) if heads % d == 0 and d * per_head <= HEAD_GROUP_BYTES]
    return max(fitting, default=1)


def _triton_raster(q, k, v, layout_q, layout_k, sparsity, cdf_threshold):
    """Divisible grids on Triton: q read and o written in raster order; K/V copied once into
    chunk order (k's chunk means computed in the same pass), which lets the kernel load them
    through tensor descriptors (TMA). On H200 that beats reading K/V in raster order, copy
    included (docs/kernels.md, levers). Heads run in groups (``head_group_size``)."""
    from .bsa_fwd_triton import auto_kv_passes, bsa_fwd_triton_raster
    from .gating_triton import pool_chunks_triton
    from .reorder_triton import chunk_order_kv_pooled

    B, H, S, D = q.shape
    out = torch.empty(B, S, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    group = head_group_size(B, H, S, k.shape[2], D, k.element_size())
    parts = []
    for h in range(0, H, group):
        heads = slice(h, h + group)
        kc, vc, k_pooled = chunk_order_kv_pooled(k[:, heads], v[:, heads], layout_k)
        q_pooled = pool_chunks_triton(q[:, heads], layout_q)
        indices, counts = select_slabbed(q_pooled, k_pooled, sparsity, cdf_threshold,
                                         _fused_topk(layout_k))
        del q_pooled, k_pooled
        bsa_fwd_triton_raster(q[:, heads], kc, vc, indices, counts, layout_q, layout_k,
                              kv_chunked=True, kv_passes=auto_kv_passes(kc), out=out[:, heads])
        del kc, vc
        parts.append((indices, counts))
    if len(parts) == 1:
        return out, *parts[0]
    width = max(p[0].shape[-1] for p in parts)
    indices = torch.cat([pad_width(p[0], width) for p in parts], dim=1)
    return out, indices, torch.cat([p[1] for p in parts], dim=1)


def _fused_topk(layout_k):
    """The Triton top-K, or None (torch.topk + sort) past the key-chunk count it can count."""
    from .gating_triton import MAX_TOPK_KEYS, topk_select_triton

    return topk_select_triton if layout_k.num_chunks <= MAX_TOPK_KEYS else None


def _chunked(on_triton, q, k, v, layout_q, layout_k, sparsity, cdf_threshold):
    """Reorder into chunk order (padding partial chunks), gate, attend, restore raster order."""
    topk_select, run, launch = None, bsa_fwd_reference, {}
    if on_triton:
        from .bsa_fwd_triton import auto_kv_passes
        from .bsa_fwd_triton import bsa_fwd_triton as run

        topk_select = _fused_topk(layout_k)
    qc = to_chunk_order(q, layout_q)
    kc = to_chunk_order(k, layout_k)
    vc = to_chunk_order(v, layout_k)
    indices, counts = gate(qc, kc, layout_q, layout_k, sparsity, cdf_threshold, topk_select)
    valid_k = layout_k.valid(q.device) if layout_k.padded else None
    if on_triton:  # the gating's lists are ascending, as key-range passes need
        launch["kv_passes"] = auto_kv_passes(kc)
    oc = run(qc, kc, vc, indices, counts, layout_q.chunk_size, layout_k.chunk_size, valid_k,
             **launch)
    del qc, kc, vc
    # Contiguous whatever reshape returned, as the fake promises.
    return from_chunk_order(oc, layout_q).contiguous(), indices, counts


def _kept_key_tokens(indices, counts, layout_k):
    """Real key tokens each query chunk attends to, int32 ``[B, heads, Nq]``."""
    if not layout_k.padded:
        return counts * layout_k.chunk_size
    valid = layout_k.valid(indices.device)
    slot = torch.arange(indices.shape[-1], device=indices.device)
    kept = torch.where(slot < counts[..., None], valid[indices.long()], 0)
    return kept.sum(-1, dtype=torch.int32)


def _raster_output(layout_q, layout_k, backend):
    """Whether the op's output is laid out ``[B, Sq, heads, D]`` (the Triton raster path)."""
    return backend == "triton" and not (layout_q.padded or layout_k.padded)


def _bsa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_q: list[int],
                 grid_k: list[int], chunk_q: list[int], chunk_k: list[int],
                 sparsity: float | None, cdf_threshold: float | None,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block-sparse attention on validated inputs (kernels/api.py checks them and picks backend).

    Args:
        q: ``[B, heads, Sq, D]``; k, v: ``[B, heads, Sk, D]``, raster order.
        grid_q, grid_k, chunk_q, chunk_k: (T, H, W) grids and (t, h, w) chunks, as lists.
        sparsity, cdf_threshold: as in ``block_sparse_attention`` (not both None).
        backend: "triton" (``api.choose_backend`` found the inputs supported) or "torch".

    Returns:
        ``(out, counts, kept)``: out ``[B, heads, Sq, D]`` in q's dtype (stored ``[B, Sq, heads, D]``
        on the Triton raster path, contiguous otherwise); int32 ``[B, heads, Nq]`` key chunks kept
        per query chunk; int32 ``[B, heads, Nq]`` real key tokens kept per query chunk.
    """
    layout_q, layout_k = make_layout(grid_q, chunk_q), make_layout(grid_k, chunk_k)
    if _raster_output(layout_q, layout_k, backend):
        out, indices, counts = _triton_raster(q, k, v, layout_q, layout_k, sparsity, cdf_threshold)
    else:
        out, indices, counts = _chunked(backend == "triton", q, k, v, layout_q, layout_k,
                                        sparsity, cdf_threshold)
    counts = counts.to(torch.int32).contiguous()
    return out, counts, _kept_key_tokens(indices, counts, layout_k)


def _bsa_forward_fake(q, k, v, grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf_threshold, backend):
    """Shapes, dtypes and strides of ``_bsa_forward``'s outputs; must match them exactly."""
    layout_q, layout_k = make_layout(grid_q, chunk_q), make_layout(grid_k, chunk_k)
    B, H, S, D = q.shape
    if _raster_output(layout_q, layout_k, backend):
        out = q.new_empty(B, S, H, D).transpose(1, 2)
    else:
        out = q.new_empty(B, H, S, D)
    counts = q.new_empty(B, H, layout_q.num_chunks, dtype=torch.int32)
    return out, counts, torch.empty_like(counts)


def _register():
    """The op, registered once per process.

    ComfyUI may import this pack under a second package name in a process that already imported
    it (tests, bench); the op's name is global, so a second import reuses the first registration,
    whose implementation is this same code.
    """
    namespace, name = OP_NAME.split("::")
    if hasattr(getattr(torch.ops, namespace), name):
        return getattr(getattr(torch.ops, namespace), name).default
    op = torch.library.custom_op(OP_NAME, mutates_args=())(_bsa_forward)
    op.register_fake(_bsa_forward_fake)
    return op


bsa_forward_op = _register()
