"""3D-chunk reorder: official order on divisible grids, padding and inverse otherwise."""

import pytest
import torch
from longcat_pack.kernels.chunking import from_chunk_order, make_layout, to_chunk_order


def _official_order(grid, chunk):
    """Raster index per chunk-order slot by explicit loops: (nt, nh, nw) then (t, h, w)."""
    (T, H, W), (t, h, w) = grid, chunk
    order = []
    for a in range(T // t):
        for bb in range(H // h):
            for c in range(W // w):
                for i in range(t):
                    for j in range(h):
                        for m in range(w):
                            order.append(((a * t + i) * H + bb * h + j) * W + c * w + m)
    return torch.tensor(order)


def test_divisible_grid_is_official_order():
    grid, chunk = (4, 8, 12), (2, 4, 4)
    x = torch.randn(2, 3, 4 * 8 * 12, 8)
    layout = make_layout(grid, chunk)
    assert not layout.padded
    y = to_chunk_order(x, layout)
    torch.testing.assert_close(y, x[:, :, _official_order(grid, chunk)], rtol=0, atol=0)
    torch.testing.assert_close(from_chunk_order(y, layout), x, rtol=0, atol=0)


# D·itemsize = 16 bytes moves as int64 words; 6 bytes (fp16, D=3) as plain elements.
@pytest.mark.parametrize("D,dtype", [(4, torch.float32), (3, torch.float16)])
@pytest.mark.parametrize("grid,chunk", [((3, 6, 7), (2, 4, 4)), ((1, 30, 52), (1, 4, 4)), ((5, 4, 4), (4, 4, 4))])
def test_padded_round_trip(grid, chunk, D, dtype):
    S = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, 2, S, D).to(dtype)
    layout = make_layout(grid, chunk)
    assert layout.padded
    y = to_chunk_order(x, layout)
    assert y.shape == (1, 2, layout.num_chunks * layout.chunk_size, D) and y.dtype == dtype
    torch.testing.assert_close(from_chunk_order(y, layout), x, rtol=0, atol=0)


def test_real_tokens_first_in_partial_chunks(chunk_ids):
    grid, chunk = (3, 6, 7), (2, 4, 4)
    S = 3 * 6 * 7
    layout = make_layout(grid, chunk)
    # Each token carries (its raster index + 1) so padding (0) is recognisable.
    x = (torch.arange(S, dtype=torch.float32) + 1).view(1, 1, S, 1)
    y = to_chunk_order(x, layout).view(layout.num_chunks, layout.chunk_size).long() - 1
    ids = chunk_ids(grid, chunk)
    valid = layout.valid()
    torch.testing.assert_close(valid.long(), torch.bincount(ids, minlength=layout.num_chunks))
    for c in range(layout.num_chunks):
        n = int(valid[c])
        expected = torch.nonzero(ids == c).flatten()  # the chunk's real tokens, raster order
        assert torch.equal(y[c, :n], expected)
        assert (y[c, n:] == -1).all()


@pytest.mark.parametrize("grid,chunk,name", [
    ((4, 8, 8), (0, 4, 4), "chunk_3d_shape"),
    ((4, 8), (4, 4, 4), "grid"),
    ((4, 8, -8), (4, 4, 4), "grid"),
    ((4, 8, 8), (4, 4, 2.5), "chunk_3d_shape"),
])
def test_bad_layout(grid, chunk, name):
    with pytest.raises(ValueError, match=name):
        make_layout(grid, chunk)
