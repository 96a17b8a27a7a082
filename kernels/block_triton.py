"""Fused Triton kernels for the elementwise work of a LongCat DiT block.

Each kernel replaces a chain of torch ops that read and write a full ``[S, 4096]`` activation
several times, most of them in fp32 (the official "fp32 islands"). They keep the official
roundings: every value the torch path rounds to the activation dtype is rounded at the same
point here; only fp32 arithmetic order differs (reduction order, fused multiply-adds), which can
flip a bf16 rounding now and then (tests/kernels/test_block_ops.py states the tolerance).

* ``ln_modulate``: LayerNorm in fp32 (optional affine), per-frame ``x·(1 + scale) + shift``,
  one rounding to x's dtype.
* ``rms_rope_``: per-head RMSNorm (normalised in fp32, rounded, times the weight, rounded) and
  optionally the interleaved 3D RoPE (fp32, rounded), in place.
* ``gated_residual_``: ``x + gate·branch`` in fp32 with a per-frame gate, rounded, written over
  ``branch``.
* ``swiglu_``: ``silu(a)`` rounded, times ``b``, rounded, written over ``a``.

Imports triton; kernels/block_ops.py imports this module lazily.
"""

import torch
import triton
import triton.language as tl


def _row_warps(block: int) -> int:
    return max(1, min(16, block // 256))


@triton.jit
def _ln_modulate_kernel(X, OUT, WEIGHT, BIAS, SHIFT, SCALE, C, tokens, per_frame,
                        stride_mod_b, stride_mod_f, eps,
                        AFFINE: tl.constexpr, MODULATE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < C
    x = tl.load(X + row * C + cols, mask=inside, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / C
    centred = tl.where(inside, x - mean, 0.0)
    var = tl.sum(centred * centred, 0) / C
    y = centred * tl.rsqrt(var + eps)
    if AFFINE:
        y = y * tl.load(WEIGHT + cols, mask=inside, other=0.0) + tl.load(BIAS + cols, mask=inside, other=0.0)
    if MODULATE:
        b = row // tokens
        f = (row % tokens) // per_frame
        mod = b * stride_mod_b + f * stride_mod_f + cols
        scale = tl.load(SCALE + mod, mask=inside, other=0.0)
        shift = tl.load(SHIFT + mod, mask=inside, other=0.0)
        y = y * (1.0 + scale) + shift
    tl.store(OUT + row * C + cols, y.to(OUT.dtype.element_ty), mask=inside)


def ln_modulate(x, eps, weight=None, bias=None, shift=None, scale=None):
    """LayerNorm (+ affine) (+ per-frame modulation) of ``x [B, N, C]`` → x's dtype ``[B, N, C]``.

    weight/bias: fp32 ``[C]`` or None. shift/scale: fp32 ``[B, T, 1, C]`` views with unit channel
    stride (N divisible by T) or None.
    """
    b, n, c = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    modulate = shift is not None
    frames = shift.shape[1] if modulate else 1
    stride_b, stride_f = (shift.stride(0), shift.stride(1)) if modulate else (0, 0)
    if modulate and (shift.stride() != scale.stride() or shift.stride(-1) != 1):
        raise ValueError(f"shift/scale need equal strides with a unit last one, got {shift.stride()}, {scale.stride()}")
    block = triton.next_power_of_2(c)
    dummy = x  # never read when the constexpr flag is off
    _ln_modulate_kernel[(b * n,)](
        x, out, weight if weight is not None else dummy, bias if bias is not None else dummy,
        shift if modulate else dummy, scale if modulate else dummy, c, n, n // frames,
        stride_b, stride_f, eps, AFFINE=weight is not None, MODULATE=modulate, BLOCK=block,
        num_warps=_row_warps(block),
    )
    return out


@triton.jit
def _rms_rope_kernel(X, WEIGHT, COS, SIN, N, stride_b, stride_n, rope_offset, eps,
                     ROPE: tl.constexpr, HEADS_PER_PROGRAM: tl.constexpr, HEAD_DIM: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    b = token // N
    n = token % N
    heads = tl.program_id(1) * HEADS_PER_PROGRAM + tl.arange(0, HEADS_PER_PROGRAM)
    features = tl.arange(0, HEAD_DIM)
    ptr = X + b * stride_b + n * stride_n + heads[:, None] * HEAD_DIM + features[None, :]
    x = tl.load(ptr).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, 1) / HEAD_DIM + eps)[:, None]
    dtype = X.dtype.element_ty
    # RMSNorm as the torch path rounds it: normalised → x's dtype, times the weight → x's dtype.
    weight = tl.load(WEIGHT + features).to(tl.float32)[None, :]
    x = ((x * inv).to(dtype).to(tl.float32) * weight).to(dtype).to(tl.float32)
    if ROPE:
        row = (rope_offset + n) * HEAD_DIM
        cos = tl.load(COS + row + features)[None, :]
        sin = tl.load(SIN + row + features)[None, :]
        # Interleaved pairs: (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin).
        even, odd = tl.split(tl.reshape(x, (HEADS_PER_PROGRAM, HEAD_DIM // 2, 2)))
        rotated = tl.reshape(tl.join(-odd, even), (HEADS_PER_PROGRAM, HEAD_DIM))
        x = x * cos + rotated * sin
    tl.store(ptr, x.to(dtype))


def _heads_per_program(heads: int) -> int:
    """Largest power of two ≤ 8 dividing ``heads`` (8 heads × 128 features per program)."""
    per = 8
    while heads % per:
        per //= 2
    return per


def rms_rope_(x, parts, part, heads, weight, cos, sin, rope_offset, eps):
    """In place on ``x [B, N, parts·heads·D]`` (contiguous): RMSNorm each head of ``part`` over D,
    then RoPE with rows ``rope_offset + n`` of ``cos``/``sin`` (fp32 ``[*, D]``) unless cos is None."""
    b, n, features = x.shape
    head_dim = features // (parts * heads)
    per = _heads_per_program(heads)
    view = x[:, :, part * heads * head_dim:]
    rope = cos is not None
    _rms_rope_kernel[(b * n, heads // per)](
        view, weight, cos if rope else weight, sin if rope else weight, n, x.stride(0), x.stride(1),
        rope_offset, eps, ROPE=rope, HEADS_PER_PROGRAM=per, HEAD_DIM=head_dim, num_warps=4,
    )


@triton.jit
def _gated_residual_kernel(X, BRANCH, GATE, C, tokens, per_frame, stride_gate_b, stride_gate_f,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < C
    b = row // tokens
    f = (row % tokens) // per_frame
    gate = tl.load(GATE + b * stride_gate_b + f * stride_gate_f + cols, mask=inside, other=0.0)
    x = tl.load(X + row * C + cols, mask=inside, other=0.0).to(tl.float32)
    branch = tl.load(BRANCH + row * C + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(BRANCH + row * C + cols, (x + gate * branch).to(BRANCH.dtype.element_ty), mask=inside)


def gated_residual_(x, branch, gate):
    """``branch ← x + gate·branch`` (fp32, one rounding); x, branch ``[B, N, C]`` contiguous,
    gate fp32 ``[B, T, 1, C]`` view with a unit channel stride."""
    b, n, c = x.shape
    if gate.stride(-1) != 1:
        raise ValueError(f"gate needs a unit channel stride, got {gate.stride()}")
    block = min(1024, triton.next_power_of_2(c))
    _gated_residual_kernel[(b * n, triton.cdiv(c, block))](
        x.contiguous(), branch, gate, c, n, n // gate.shape[1], gate.stride(0), gate.stride(1),
        BLOCK=block, num_warps=4,
    )


@triton.jit
def _swiglu_kernel(A, B, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    a = tl.load(A + offs, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=inside, other=0.0).to(tl.float32)
    dtype = A.dtype.element_ty
    silu = (a / (1.0 + tl.exp(-a))).to(dtype).to(tl.float32)
    tl.store(A + offs, (silu * b).to(dtype), mask=inside)


def swiglu_(a, b):
    """``a ← silu(a) · b`` with torch's roundings; a, b contiguous, same shape."""
    numel = a.numel()
    block = 2048
    _swiglu_kernel[(triton.cdiv(numel, block),)](a, b, numel, BLOCK=block, num_warps=8)
