"""Plain-torch block-sparse attention forward: the CPU/MPS path and the oracle in tests.

Same signature and semantics as ``bsa_fwd_triton`` (kernels/bsa_fwd_triton.py): inputs are in
chunk order, each query chunk attends with exact softmax to the union of its selected key chunks,
and slots past a key chunk's real-token count get zero probability. Works on groups of query
chunks at a time and never builds an S×S matrix.

Imports only torch; must not import triton, the model package or ComfyUI.
"""

import torch

# Upper bound on the fp32 working set of one step (gathered K and V plus scores), in bytes.
_STEP_BYTES = 256 * 1024 * 1024


def _chunks_per_step(batch_heads, kmax, chunk_q, chunk_k, head_dim):
    per_chunk = batch_heads * kmax * chunk_k * (2 * head_dim + 2 * chunk_q) * 4
    return max(1, _STEP_BYTES // max(per_chunk, 1))


def bsa_fwd_reference(q, k, v, indices, counts, chunk_q, chunk_k, valid_k=None, sm_scale=None):
    """Block-sparse attention forward in torch.

    Args:
        q: ``[B, heads, Nq·chunk_q, D]`` queries in chunk order.
        k, v: ``[B, heads, Nk·chunk_k, D]`` keys / values in chunk order.
        indices: int ``[B, heads, Nq, Kmax]`` selected key-chunk ids per query chunk.
        counts: int ``[B, heads, Nq]`` how many leading entries of ``indices`` are used (≥ 1).
        chunk_q, chunk_k: tokens per query / key chunk.
        valid_k: int ``[Nk]`` real tokens per key chunk (real tokens first), or None if all full.
        sm_scale: softmax scale, default 1/√D.

    Returns:
        ``[B, heads, Nq·chunk_q, D]`` in ``q.dtype``; math in fp32 (fp64 for fp64 inputs).
    """
    B, H, Lq, D = q.shape
    nq, nk, kmax = Lq // chunk_q, k.shape[2] // chunk_k, indices.shape[-1]
    scale = D**-0.5 if sm_scale is None else sm_scale
    work = torch.promote_types(q.dtype, torch.float32)
    kc = k.view(B, H, nk, chunk_k, D)
    vc = v.view(B, H, nk, chunk_k, D)
    b_ar = torch.arange(B, device=q.device)[:, None, None]
    h_ar = torch.arange(H, device=q.device)[None, :, None]
    slot_in_list = torch.arange(kmax, device=q.device)
    slot_in_chunk = torch.arange(chunk_k, device=q.device)
    out = torch.empty_like(q)
    step = _chunks_per_step(B * H, kmax, chunk_q, chunk_k, D)
    for start in range(0, nq, step):
        end = min(nq, start + step)
        g = end - start
        idx = indices[:, :, start:end].long()  # [B, H, g, Kmax]
        flat = idx.reshape(B, H, g * kmax)
        kg = kc[b_ar, h_ar, flat].to(work).view(B, H, g, kmax * chunk_k, D)
        vg = vc[b_ar, h_ar, flat].to(work).view(B, H, g, kmax * chunk_k, D)
        keep = (slot_in_list < counts[:, :, start:end, None])[..., None]  # [B, H, g, Kmax, 1]
        if valid_k is not None:
            keep = keep & (slot_in_chunk < valid_k.to(q.device)[idx][..., None])
        keep = keep.expand(B, H, g, kmax, chunk_k).reshape(B, H, g, 1, kmax * chunk_k)
        qg = q[:, :, start * chunk_q : end * chunk_q].to(work).view(B, H, g, chunk_q, D)
        scores = torch.matmul(qg, kg.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        del scores, kg
        og = torch.matmul(probs, vg)
        out[:, :, start * chunk_q : end * chunk_q] = og.reshape(B, H, g * chunk_q, D).to(q.dtype)
    return out
