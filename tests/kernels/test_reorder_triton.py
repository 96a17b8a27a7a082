"""K/V into chunk order with k's chunk means in one Triton pass (interpreter on CPU)."""

import pytest
import torch

triton = pytest.importorskip("triton")
from longcat_pack.kernels.chunking import make_layout, to_chunk_order
from longcat_pack.kernels.reorder_triton import chunk_order_kv_pooled


@pytest.mark.parametrize("grid,chunk", [((4, 8, 12), (2, 4, 4)), ((3, 6, 10), (1, 3, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reorder_and_pool_match_torch(grid, chunk, dtype, pooled_oracle):
    """Same copies as to_chunk_order; means as the fp64 oracle (fp32 sum, one rounding). The
    second case has 15-token chunks (padded tile, masked) and a transposed [B, S, heads, D] k."""
    layout = make_layout(grid, chunk)
    S = layout.num_tokens
    k = torch.randn(2, S, 3, 16).to(dtype).transpose(1, 2)   # the DiT's strided view
    v = torch.randn(2, 3, S, 16).to(dtype)
    kc, vc, pooled = chunk_order_kv_pooled(k, v, layout)
    assert torch.equal(kc, to_chunk_order(k, layout)) and kc.is_contiguous()
    assert torch.equal(vc, to_chunk_order(v, layout))
    atol = 1e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(pooled.double(), pooled_oracle(k, grid, chunk), atol=atol, rtol=0)


def test_rejects_padded_grids_and_mismatched_shapes():
    x = torch.randn(1, 1, 3 * 6 * 7, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        chunk_order_kv_pooled(x, x, make_layout((3, 6, 7), (2, 4, 4)))
    layout = make_layout((2, 4, 4), (2, 4, 4))
    with pytest.raises(ValueError, match="must match"):
        chunk_order_kv_pooled(torch.randn(1, 1, 32, 16), torch.randn(1, 1, 32, 8), layout)
    with pytest.raises(ValueError, match="must match"):
        chunk_order_kv_pooled(torch.randn(1, 1, 31, 16), torch.randn(1, 1, 31, 16), layout)
