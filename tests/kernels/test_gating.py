"""Gating: pooling over real tokens, top-K / CDF / both against a direct re-derivation, K ≥ 1."""

import pytest
import torch
from longcat_pack.kernels.chunking import make_layout, to_chunk_order
from longcat_pack.kernels.gating import gate, pool_chunks, select_blocks, topk_count


def _gate(q, k, grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf_threshold):
    lq, lk = make_layout(grid_q, chunk_q), make_layout(grid_k, chunk_k)
    return gate(to_chunk_order(q, lq), to_chunk_order(k, lk), lq, lk, sparsity, cdf_threshold)


def _as_sets(indices, counts):
    B, H, nq, _ = indices.shape
    return {(b, h, c): set(indices[b, h, c, : counts[b, h, c]].tolist())
            for b in range(B) for h in range(H) for c in range(nq)}


def test_pool_real_tokens_only(pooled_oracle):
    grid, chunk = (3, 6, 7), (2, 4, 4)
    x = torch.randn(1, 2, 3 * 6 * 7, 8, dtype=torch.float64)
    layout = make_layout(grid, chunk)
    pooled = pool_chunks(to_chunk_order(x, layout), layout.chunk_size, layout.valid())
    torch.testing.assert_close(pooled, pooled_oracle(x, grid, chunk))


# (grid_q, grid_k, chunk_q, chunk_k): divisible, padded, Tq ≠ Tk with chunk_q ≠ chunk_k.
CASES = [
    ((4, 8, 8), (4, 8, 8), (2, 4, 4), (2, 4, 4)),
    ((3, 6, 7), (3, 6, 7), (2, 4, 4), (2, 4, 4)),
    ((2, 8, 8), (6, 8, 8), (2, 4, 4), (1, 4, 8)),
]


@pytest.mark.parametrize("sparsity,cdf", [(0.75, None), (None, 0.5), (0.9, 0.3), (0.5, 0.9)])
@pytest.mark.parametrize("grid_q,grid_k,chunk_q,chunk_k", CASES)
def test_selection_matches_rederivation(grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf, rederive_selection):
    torch.manual_seed(0)
    D = 16
    q = torch.randn(1, 2, grid_q[0] * grid_q[1] * grid_q[2], D, dtype=torch.float64)
    k = torch.randn(1, 2, grid_k[0] * grid_k[1] * grid_k[2], D, dtype=torch.float64)
    indices, counts = _gate(q, k, grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf)
    assert indices.dtype == counts.dtype == torch.int32
    expected = rederive_selection(q, k, grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf)
    assert _as_sets(indices, counts) == expected
    # Each row's used prefix is ascending and distinct (sorted for L2 reuse).
    for b, h, c in expected:
        row = indices[b, h, c, : counts[b, h, c]]
        assert (row[1:] > row[:-1]).all()


def test_at_least_one_block():
    """Deviation: official top-K keeps int((1-s)·Nk) = 0 here and CDF can keep 0; we keep 1."""
    scores = torch.randn(1, 1, 4, 8)
    assert int((1 - 0.9375) * 8) == 0
    _, counts = select_blocks(scores, 0.9375, None, head_dim=16)
    assert (counts == 1).all()
    # A peaked score row: its top block alone carries > 1e-3 of the mass, so official CDF keeps 0.
    peaked = torch.zeros(1, 1, 1, 8)
    peaked[..., 3] = 50.0
    indices, counts = select_blocks(peaked, None, 1e-3, head_dim=16)
    assert counts.item() == 1 and indices[0, 0, 0, 0].item() == 3


def test_topk_count_is_official_floor():
    assert topk_count(0.9375, 2640) == 165  # t2v refine grid: 165 of 2640 key chunks
    assert topk_count(0.9375, 2860) == 178
    assert topk_count(0.875, 1350) == 168
    assert topk_count(0.0, 7) == 7


def test_cdf_unused_slots_are_safe_addresses():
    scores = torch.randn(2, 3, 5, 9)
    indices, counts = select_blocks(scores, None, 0.6, head_dim=4)
    assert indices.min() >= 0 and indices.max() < 9
    assert indices.shape[-1] == int(counts.max())
