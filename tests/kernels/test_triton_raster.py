"""Triton raster path (interpreter on CPU): pooling from raster order, fused top-K, slabbed
selection, and the forward reading/writing raster order, each against an independent oracle."""

import pytest
import torch

triton = pytest.importorskip("triton")
from longcat_pack.kernels import block_sparse_attention, gating
from longcat_pack.kernels.bsa_fwd_triton import bsa_fwd_triton_raster
from longcat_pack.kernels.chunking import make_layout, to_chunk_order
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


@pytest.mark.parametrize("dtype,nk,k", [(torch.float32, 37, 5), (torch.float16, 200, 17),
                                        (torch.float32, 16, 16), (torch.float32, 9, 1)])
def test_topk_select_matches_oracle(dtype, nk, k):
    gen = torch.Generator().manual_seed(nk)
    scores = torch.randn(2, 3, 7, nk, generator=gen).to(dtype)
    if dtype == torch.float16:  # few distinct values: many ties, negative and zero scores
        scores = (scores * 4).round() / 4
    indices = torch.full((2, 3, 9, k), -1, dtype=torch.int32)
    topk_select_triton(scores, k, indices, row0=2)
    assert torch.equal(indices[:, :, 2:], _topk_oracle(scores, k))
    assert (indices[:, :, :2] == -1).all()


def test_pool_raster_and_padded_chunk_order(pooled_oracle):
    x = torch.randn(1, 2, 4 * 8 * 12, 16)
    layout = make_layout((4, 8, 12), (2, 4, 4))
    torch.testing.assert_close(pool_chunks_triton(x, layout, raster=True).double(),
                               pooled_oracle(x, layout.grid, layout.chunk), atol=1e-6, rtol=0)
    xp = torch.randn(1, 2, 3 * 6 * 7, 16)
    lp = make_layout((3, 6, 7), (2, 4, 4))
    pooled = pool_chunks_triton(to_chunk_order(xp, lp), lp, raster=False, valid=lp.valid())
    torch.testing.assert_close(pooled.double(), pooled_oracle(xp, lp.grid, lp.chunk), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cdf", [None, 0.5])
def test_select_slabbed_equals_one_slab(monkeypatch, cdf):
    qp, kp = torch.randn(1, 2, 11, 8), torch.randn(1, 2, 13, 8)
    whole = gating.select_blocks(qp @ kp.transpose(-1, -2), 0.75, cdf, 8)
    monkeypatch.setattr(gating, "_SLAB_BYTES", 2 * 13 * 24 * 3)  # 3 query chunks per slab
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
