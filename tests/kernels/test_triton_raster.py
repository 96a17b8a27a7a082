"""Triton raster path (interpreter on CPU): pooling from raster order, fused top-K, slabbed
selection, and the forward reading/writing raster order, each against an independent oracle."""

import pytest
import torch

triton = pytest.importorskip("triton")
from longcat_pack.kernels import block_sparse_attention, gating
from longcat_pack.kernels.bsa_fwd_triton import bsa_fwd_triton_raster
from longcat_pack.kernels.chunking import make_layout
from longcat_pack.kernels.gating_triton import pool_chunks_triton, topk_select_triton


def _topk_oracle(scores, k):
    """Per row: every id above the K-th largest value, then the lowest ids tied with it."""
    out = []
    for row in scores.reshape(-1, scores.shape[-1]).double():
        kth = torch.sort(row, descending=True).values[k - 1]
        above = torch.nonzero(row > kth).flatten()
        tied = torch.nonzero(row == kth).flatten()[: k - above.numel()]
        out.append(torch.sort(torch.cat([above, tied])).values)
    return torch.stack(out).view(*scores.shape[:-1], k).to(torch.int32)


def _check_topk(scores, k, row0=2, **launch):
    """Write a slab at row0 of a larger index tensor: its rows equal the oracle, other rows and
    the guard words around the tensor (a wrong rank would write there) stay untouched."""
    B, H, R, nk = scores.shape
    size, guard = B * H * (row0 + R + 1) * k, nk + k
    buffer = torch.full((size + 2 * guard,), -1, dtype=torch.int32)
    indices = buffer[guard:guard + size].view(B, H, row0 + R + 1, k)
    topk_select_triton(scores, k, indices, row0, **launch)
    assert torch.equal(indices[:, :, row0:row0 + R], _topk_oracle(scores, k))
    assert (indices[:, :, :row0] == -1).all() and (indices[:, :, row0 + R:] == -1).all()
    assert (buffer[:guard] == -1).all() and (buffer[guard + size:] == -1).all()


# Nk not a power of two, K = 1, K = Nk, Nk = 1; 600 keys fill both parts of a row (8 + 2 a thread).
@pytest.mark.parametrize("dtype,nk,k", [(torch.float32, 37, 5), (torch.float16, 200, 17),
                                        (torch.float32, 16, 16), (torch.float32, 9, 1),
                                        (torch.float16, 600, 37), (torch.float16, 1, 1)])
def test_topk_select_matches_oracle(dtype, nk, k):
    gen = torch.Generator().manual_seed(nk)
    scores = torch.randn(2, 3, 7, nk, generator=gen).to(dtype)
    if dtype == torch.float16:  # few distinct values: many ties, negative and zero scores
        scores = (scores * 4).round() / 4
    _check_topk(scores, k)


# Keys that differ only in the sign or top exponent bits (the one-bit passes) and only in the
# last mantissa bits (the two-per-word passes), ±0, ±inf and the fp16 extremes.
_EDGE_VALUES = [-float("inf"), -65504.0, -2.0, -1.0, -0.0, 0.0, 2.0**-14, 1.0, 1.0 + 2.0**-10,
                1.0 + 2.0**-9, 1024.0, 65504.0, float("inf")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_topk_select_ties_signed_zeros_and_equal_rows(dtype):
    gen = torch.Generator().manual_seed(5)
    values = torch.tensor(_EDGE_VALUES)
    scores = values[torch.randint(len(_EDGE_VALUES), (1, 2, 4, 45), generator=gen)]
    scores[0, 0, 1] = -0.0  # all equal (and −0 == +0): the lowest ids win
    scores[0, 0, 2, ::2] = 0.0
    scores[0, 1, 3] = 1.0 + 2.0**-10
    scores = scores.to(dtype)
    for k in (1, 9, 23, 45):  # the K-th value lands on ties of different values across rows
        _check_topk(scores, k)


def test_topk_select_warps_and_long_rows():
    """1-4 warps; 1500 keys on one warp: several 8-key runs in both parts (32 + 16 a thread)."""
    gen = torch.Generator().manual_seed(7)
    scores = ((torch.randn(1, 1, 2, 1500, generator=gen) * 8).round() / 8).to(torch.float16)
    for num_warps in (1, 2, 4):
        _check_topk(scores, 94, row0=1, num_warps=num_warps)


def test_topk_select_rejects_bad_input():
    indices = torch.zeros(1, 1, 1, 4, dtype=torch.int32)
    half = torch.float16
    for scores, k, warps in ((torch.zeros(1, 1, 1, 3), 4, None), (torch.zeros(1, 1, 1, 3), 0, None),
                             (torch.zeros(1, 1, 1, 3, dtype=torch.int32), 2, None),
                             (torch.zeros(1, 1, 1, 32768, dtype=half), 4, None),
                             (torch.zeros(1, 1, 1, 2049, dtype=half), 4, 1)):  # > 64 keys a thread
        with pytest.raises(ValueError):
            topk_select_triton(scores, k, indices, 0, num_warps=warps)


def test_pool_from_raster_order(pooled_oracle):
    x = torch.randn(1, 2, 4 * 8 * 12, 16)
    layout = make_layout((4, 8, 12), (2, 4, 4))
    torch.testing.assert_close(pool_chunks_triton(x, layout).double(),
                               pooled_oracle(x, layout.grid, layout.chunk), atol=1e-6, rtol=0)
    # Padded grids pool in torch (kernels/gating.py, tested in test_gating.py).
    with pytest.raises(ValueError, match="not a multiple"):
        pool_chunks_triton(torch.randn(1, 2, 3 * 6 * 7, 16), make_layout((3, 6, 7), (2, 4, 4)))


@pytest.mark.parametrize("cdf", [None, 0.5])
def test_select_slabbed_equals_one_slab(monkeypatch, cdf):
    qp, kp = torch.randn(1, 2, 11, 8), torch.randn(1, 2, 13, 8)
    whole = gating.select_blocks(qp @ kp.transpose(-1, -2), 0.75, cdf, 8)
    monkeypatch.setattr(gating, "SLAB_BYTES", 2 * 13 * 24 * 3)  # 3 query chunks per slab
    for select in (None, topk_select_triton):
        idx, cnt = gating.select_slabbed(qp, kp, 0.75, cdf, select)
        assert torch.equal(cnt, whole[1])
        for b, h, c in [(0, h, c) for h in range(2) for c in range(11)]:
            n = int(cnt[b, h, c])
            assert torch.equal(idx[b, h, c, :n], whole[0][b, h, c, :n])


def test_raster_forward_matches_masked_dense(masked_dense):
    gen = torch.Generator().manual_seed(3)
    (gq, cq), (gk, ck) = ((2, 8, 8), (2, 4, 4)), ((3, 4, 16), (1, 4, 8))
    lq, lk = make_layout(gq, cq), make_layout(gk, ck)
    # q as a transposed [B, S, heads, D] view: the kernel takes any token stride.
    q = torch.randn(1, lq.num_tokens, 2, 64, generator=gen).to(torch.float16).transpose(1, 2)
    k, v = (torch.randn(1, 2, lk.num_tokens, 64, generator=gen).to(torch.float16) for _ in range(2))
    nk = lk.num_chunks
    indices = torch.stack([torch.randperm(nk, generator=gen)[:4] for _ in range(2 * lq.num_chunks)])
    indices = indices.view(1, 2, lq.num_chunks, 4).to(torch.int32)
    counts = torch.randint(1, 5, (1, 2, lq.num_chunks), generator=gen, dtype=torch.int32)
    out = bsa_fwd_triton_raster(q, k, v, indices, counts, lq, lk)
    ref = masked_dense(q, k, v, gq, gk, cq, ck, indices, counts)
    torch.testing.assert_close(out.double(), ref, atol=4e-3, rtol=0)
    with pytest.raises(ValueError, match="not a multiple"):
        bsa_fwd_triton_raster(q, k, v, indices, counts, make_layout((2, 8, 8), (2, 3, 4)), lk)


def test_public_raster_path_matches_torch_backend():
    gen = torch.Generator().manual_seed(4)
    grid = (4, 8, 8)
    q, k, v = (torch.randn(1, 2, 256, 64, generator=gen).to(torch.float16) for _ in range(3))
    kw = {"sparsity": 0.5, "chunk_3d_shape_q": (2, 4, 4), "chunk_3d_shape_k": (2, 4, 4), "return_report": True}
    out, rep = block_sparse_attention(q, k, v, grid, grid, backend="triton", **kw)
    ref, rep_ref = block_sparse_attention(q.float(), k.float(), v.float(), grid, grid,
                                          backend="torch", **kw)
    assert rep.backend == "triton" and rep_ref.backend == "torch"
    assert torch.equal(rep.blocks_per_query_chunk, rep_ref.blocks_per_query_chunk)
    torch.testing.assert_close(out.float(), ref, atol=4e-3, rtol=0)


def test_gating_falls_back_to_torch_topk_past_the_fused_limit():
    """The fused top-K counts at most MAX_TOPK_KEYS key chunks; longer grids use torch.topk."""
    from longcat_pack.kernels.gating_triton import MAX_TOPK_KEYS
    from longcat_pack.kernels.op import _fused_topk

    assert _fused_topk(make_layout((MAX_TOPK_KEYS, 1, 1), (1, 1, 1))) is topk_select_triton
    assert _fused_topk(make_layout((MAX_TOPK_KEYS + 1, 1, 1), (1, 1, 1))) is None


@pytest.mark.parametrize("cdf", [None, 0.6])
def test_raster_path_in_head_groups_equals_one_call(monkeypatch, cdf):
    """Heads run in groups when a call's buffers would pass HEAD_GROUP_BYTES: same output,
    same block counts (heads are independent), written into one raster output."""
    from longcat_pack.kernels import op

    gen = torch.Generator().manual_seed(6)
    grid = (4, 8, 8)
    q, k, v = (torch.randn(2, 4, 256, 64, generator=gen).to(torch.float16) for _ in range(3))
    kw = {"sparsity": 0.5, "cdf_threshold": cdf, "chunk_3d_shape_q": (2, 4, 4),
          "chunk_3d_shape_k": (2, 4, 4), "return_report": True, "backend": "triton"}
    whole, rep = block_sparse_attention(q, k, v, grid, grid, **kw)
    per_head = 2 * 64 * (2 * 256 * 2 + 4 * 256)
    monkeypatch.setattr(op, "HEAD_GROUP_BYTES", 2 * per_head)
    assert op.head_group_size(2, 4, 256, 256, 64, 2) == 2
    grouped, rep_grouped = block_sparse_attention(q, k, v, grid, grid, **kw)
    assert torch.equal(grouped, whole)
    assert torch.equal(rep_grouped.blocks_per_query_chunk, rep.blocks_per_query_chunk)
