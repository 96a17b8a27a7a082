"""The fused block kernels (kernels/block_ops.py) against the torch path they replace.

The ops run under TRITON_INTERPRET=1 on CPU tensors (fp32, fp16: bf16 is wrong in the interpreter). The
oracle is the torch code the DiT runs on the CPU, written out here op by op. fp32 agrees to
rounding (reduction order, fused multiply-adds); fp16 to one unit in the last place of the
rounded values, which is the tolerance the fused path has on the GPU in bf16 too.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from longcat_pack.kernels import block_ops
from longcat_pack.kernels.block_ops import (
    gated_residual_op,
    ln_modulate_op,
    rms_rope_op,
    swiglu_op,
)

EPS = 1e-6
# fp32: rounding only; fp16: one fp16 ulp of values of order 1-4.
TOL = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.float16: {"atol": 4e-3, "rtol": 2e-3}}


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("affine,modulated", [(False, True), (True, False), (False, False)])
def test_ln_modulate(dtype, affine, modulated):
    b, frames, per_frame, c = 2, 3, 5, 96  # C not a power of two: masked columns
    x = rand(b, frames * per_frame, c, dtype=dtype, scale=3.0) + 1.0
    weight, bias = (rand(c, seed=1), rand(c, seed=2)) if affine else (None, None)
    mod = rand(b, frames, 1, 4 * c, seed=3)  # shift/scale are strided views, as the DiT passes them
    shift, scale = (mod[..., c:2 * c], mod[..., 3 * c:]) if modulated else (None, None)
    want = F.layer_norm(x.float(), (c,), weight, bias, EPS)
    if modulated:
        want = (want.reshape(b, frames, per_frame, c) * (1 + scale) + shift).reshape(b, -1, c)
    got = ln_modulate_op(x, weight, bias, shift, scale, EPS)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.float(), want.to(dtype).float(), **TOL[dtype])


def rope_tables(s, d, seed=4):
    angles = rand(s, d // 2, seed=seed, scale=3.0).repeat_interleave(2, -1)
    return angles.cos(), angles.sin()


def rms_rope_oracle(x, weight, cos, sin):
    """The torch path: RMSNorm (fp32 normalise, round, × weight, round), then interleaved RoPE."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * weight
    if cos is None:
        return normed
    nf = normed.float()
    rotated = torch.stack((-nf[..., 1::2], nf[..., 0::2]), dim=-1).flatten(-2)
    return (nf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("part,rope,offset", [(0, True, 4), (1, True, 0), (1, False, 0)])
def test_rms_rope_in_place_on_one_part(dtype, part, rope, offset):
    b, n, heads, d = 2, 6, 4, 32
    qkv = rand(b, n, 3 * heads * d, dtype=dtype, scale=2.0)
    weight = (rand(d, seed=5) * 0.3 + 1).to(dtype)
    cos, sin = rope_tables(offset + n, d)
    before = qkv.clone().view(b, n, 3, heads, d)
    rms_rope_op(qkv, 3, part, heads, weight, cos if rope else None, sin if rope else None, offset, EPS)
    after = qkv.view(b, n, 3, heads, d)
    tables = (cos[offset:], sin[offset:]) if rope else (None, None)
    want = rms_rope_oracle(before[:, :, part], weight, *tables)
    torch.testing.assert_close(after[:, :, part].float(), want.float(), **TOL[dtype])
    others = [p for p in range(3) if p != part]
    assert torch.equal(after[:, :, others], before[:, :, others])  # the other parts untouched


@pytest.mark.parametrize("heads", [1, 2, 6, 32])  # programs of 1, 2, 2 and 8 heads
def test_rms_rope_any_head_count(heads):
    b, n, d = 1, 3, 16
    x = rand(b, n, heads * d)
    weight = rand(d, seed=6)
    cos, sin = rope_tables(n, d)
    want = rms_rope_oracle(x.view(b, n, heads, d), weight, cos, sin)
    rms_rope_op(x, 1, 0, heads, weight, cos, sin, 0, EPS)
    torch.testing.assert_close(x.view(b, n, heads, d), want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gated_residual_written_over_branch(dtype):
    b, frames, per_frame, c = 2, 3, 4, 1500  # two column programs, the second masked
    x = rand(b, frames * per_frame, c, dtype=dtype)
    branch = rand(b, frames * per_frame, c, dtype=dtype, seed=1)
    gate = rand(b, frames, 1, 3 * c, seed=2)[..., c:2 * c]
    want = (x.reshape(b, frames, per_frame, c).float() + gate * branch.reshape(b, frames, per_frame, c).float())
    want = want.to(dtype).reshape(b, -1, c)
    x_before = x.clone()
    gated_residual_op(x, branch, gate)
    torch.testing.assert_close(branch.float(), want.float(), **TOL[dtype])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_swiglu_written_over_gate(dtype):
    a = rand(3, 5, 700, dtype=dtype, scale=4.0)  # large negative inputs: exp overflow gives silu = -0
    up = rand(3, 5, 700, dtype=dtype, seed=1)
    want = F.silu(a.float()).to(dtype) * up
    swiglu_op(a, up)
    torch.testing.assert_close(a.float(), want.float(), **TOL[dtype])


def test_fused_block_reason_says_why_not(monkeypatch):
    """Decided from the device, the compute dtype and the head size; the CPU never qualifies
    (the interpreter runs the kernels there only when a test asks for it explicitly)."""
    assert block_ops.fused_block_reason("cpu") == "the model runs on cpu"
    assert block_ops.fused_block_reason(torch.device("meta")) == "the model runs on meta"
    assert "power of two" in block_ops.fused_block_reason("cuda", torch.bfloat16, head_dim=48)
    assert "compute dtype torch.float8_e4m3fn" in block_ops.fused_block_reason("cuda", torch.float8_e4m3fn)
    assert block_ops.fused_block_reason("cuda", torch.bfloat16) is None  # triton is importable here
    monkeypatch.setitem(sys.modules, "longcat_pack.kernels.block_triton", None)  # as without triton
    monkeypatch.delattr(sys.modules["longcat_pack.kernels"], "block_triton", raising=False)
    assert block_ops.fused_block_reason("cuda", None).startswith("triton not importable")


def test_ops_trace_as_single_nodes_under_compile():
    x = rand(1, 4, 64)
    shift, scale = rand(1, 2, 1, 64, seed=1), rand(1, 2, 1, 64, seed=2)

    def fn(x):
        h = ln_modulate_op(x, None, None, shift, scale, EPS)
        swiglu_op(h, x)
        return h

    want = fn(x.clone())
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x.clone())
    torch.testing.assert_close(got, want)
