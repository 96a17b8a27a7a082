"""3D RoPE (official): 44/42/42 split, θ = 10000, interleaved pairs, cache offset."""

import pytest
import torch
from longcat_pack.longcat.rope import (
    RopeCache,
    apply_rope,
    rope_axis_dims,
    rope_table,
    rotate_pairs,
)


def test_axis_split_published_and_general():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(32) == (12, 10, 10)
    assert rope_axis_dims(64) == (24, 20, 20)
    with pytest.raises(ValueError, match="head_dim"):
        rope_axis_dims(36)


def test_rotate_pairs_is_interleaved():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_pairs(x).tolist() == [-2.0, 1.0, -4.0, 3.0]


def test_table_angles_per_axis_and_position():
    cos, sin = rope_table((3, 4, 5), 128)
    token = (2 * 4 + 3) * 5 + 1  # (t=2, h=3, w=1), T-major raster order
    angle = torch.atan2(sin[token], cos[token])
    expect_t = 2 * 10000.0 ** (-torch.arange(0, 44, 2, dtype=torch.float64) / 44)
    expect_h = 3 * 10000.0 ** (-torch.arange(0, 42, 2, dtype=torch.float64) / 42)
    expect_w = 1 * 10000.0 ** (-torch.arange(0, 42, 2, dtype=torch.float64) / 42)
    expect = torch.cat([expect_t, expect_h, expect_w]).repeat_interleave(2)
    wrapped = torch.atan2(torch.sin(expect), torch.cos(expect)).float()
    torch.testing.assert_close(angle, wrapped, atol=1e-5, rtol=0)


def test_apply_rope_rotates_each_pair_by_its_angle():
    x = torch.randn(1, 1, 6, 32)
    cos, sin = rope_table((1, 2, 3), 32)
    out = apply_rope(x, cos, sin)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, 0::2], sin[:, 0::2]
    torch.testing.assert_close(out[..., 0::2], x0 * c - x1 * s)
    torch.testing.assert_close(out[..., 1::2], x1 * c + x0 * s)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_apply_rope_keeps_dtype_and_computes_in_fp32():
    x = torch.randn(1, 2, 6, 32, dtype=torch.bfloat16)
    cos, sin = rope_table((1, 2, 3), 32)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, apply_rope(x.float(), cos, sin).bfloat16(), atol=0, rtol=0)


def test_query_positions_after_cache_start_at_tc():
    cos_full, _ = rope_table((5, 2, 3), 32)
    cos_tail, _ = rope_table((3, 2, 3), 32)
    assert torch.equal(cos_full[:6], rope_table((1, 2, 3), 32)[0])
    # rows of frames 2..4 of the full grid are frames 2..4, not 0..2
    assert not torch.allclose(cos_full[-18:], cos_tail)


def test_cache_reuses_and_bounds():
    cache = RopeCache()
    a = cache.get((2, 3, 4), 32, "cpu")
    assert cache.get((2, 3, 4), 32, "cpu") is a
    for t in range(3, 9):
        cache.get((t, 3, 4), 32, "cpu")
    assert cache.get((2, 3, 4), 32, "cpu") is not a
