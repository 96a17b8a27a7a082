"""Building blocks of the LongCat DiT: norms, embedders, SwiGLU FFN, final layer, fp32 islands.

Every Linear / Conv3d / LayerNorm comes from an injected ``operations`` namespace (``torch.nn`` in
tests, ``comfy.ops.*`` inside ComfyUI) so the loader decides casting, fp8 and offload. Attribute
names follow the official state-dict keys (docs/model.md). Imports nothing from ComfyUI.

The official model runs several parts in fp32 even when its weights are bf16 ("fp32 islands"):
adaLN modulation, the LayerNorms, the timestep embedder and the final layer. ``linear_fp32`` and
``layer_norm_fp32`` reproduce that explicitly (no autocast), casting bf16/fp16/fp8 weights up.
"""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.block_ops import (
    fused_block_reason,
    gated_residual_op,
    ln_modulate_op,
    rms_rope_op,
    swiglu_op,
)
from .scaled_fp8 import dequantize

NORM_EPS = 1e-6  # every LayerNorm and RMSNorm of the official model


def _casts_itself(layer: nn.Module) -> bool:
    """True for ComfyUI ops that cast (and patch / offload) their own weights at forward time."""
    return bool(
        getattr(layer, "comfy_cast_weights", False)
        or getattr(layer, "weight_function", None)
        or getattr(layer, "bias_function", None)
    )


def _like(param: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``param`` (or None) on ``x``'s device and in ``x``'s dtype."""
    return None if param is None else param.to(device=x.device, dtype=x.dtype)


def _weight_like(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer.weight`` on ``x``'s device and in its dtype; a scaled fp8 weight (a
    ``scale_weight`` per output row, see ``scaled_fp8``) is dequantized on the way."""
    scale = getattr(layer, "scale_weight", None)
    if scale is None:
        return _like(layer.weight, x)
    return dequantize(layer.weight.to(x.device), scale.to(x.device), x.dtype)


def linear_fp32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in fp32 whatever the weight dtype. x ``[..., in]`` → fp32 ``[..., out]``.

    ComfyUI cast ops are called directly: they cast weights to the input dtype (fp32) and apply
    their weight patches and low-VRAM offload. Other layers get their weights upcast here.
    """
    x = x.float()
    if _casts_itself(layer):
        return layer(x)
    return F.linear(x, _weight_like(layer, x), _like(layer.bias, x))


def layer_norm_fp32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` in fp32 (affine or not), returned as fp32 (the caller casts back)."""
    x = x.float()
    if _casts_itself(norm):
        return norm(x)
    weight, bias = _like(getattr(norm, "weight", None), x), _like(getattr(norm, "bias", None), x)
    return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x·(1 + scale) + shift``; x ``[B, T, HW, C]``, shift/scale ``[B, T, 1, C]``."""
    return x * (1 + scale) + shift


# The block's elementwise work, each function one fused kernel on the GPU (kernels/block_ops.py)
# and the torch ops below on the CPU; the torch ops are also the tests' oracle.

def norm_modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``modulate(LayerNorm(x))`` in fp32, per frame, rounded once to x's dtype.

    x ``[B, N, C]``; shift/scale fp32 ``[B, T, 1, C]`` (N divisible by T); ``norm`` has no affine."""
    if fused_block_reason(x) is None:
        return ln_modulate_op(x, None, None, shift, scale, norm.eps)
    b, n, c = x.shape
    h = modulate(layer_norm_fp32(norm, x.reshape(b, shift.shape[1], -1, c)), shift, scale)
    return h.to(x.dtype).reshape(b, n, c)


def norm_affine(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Affine LayerNorm of x ``[B, N, C]`` in fp32, rounded to x's dtype.

    ComfyUI ops that cast their own weights (fp8, low-VRAM offload, weight patches) keep the torch
    path: only the layer knows how to produce its patched weights."""
    if fused_block_reason(x) is None and not _casts_itself(norm):
        weight = norm.weight.to(device=x.device, dtype=torch.float32)
        bias = norm.bias.to(device=x.device, dtype=torch.float32)
        return ln_modulate_op(x, weight, bias, None, None, norm.eps)
    return layer_norm_fp32(norm, x).to(x.dtype)


def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + gate·branch`` in fp32 (gate ``[B, T, 1, C]`` per frame), cast back to x's dtype.

    x, branch ``[B, N, C]``; the fused path writes the result over ``branch`` (a fresh layer output)."""
    if fused_block_reason(x) is None and branch.is_contiguous() and branch.dtype == x.dtype:
        gated_residual_op(x, branch, gate)
        return branch
    b, n, c = x.shape
    frames = gate.shape[1]
    out = x.reshape(b, frames, -1, c).float() + gate * branch.reshape(b, frames, -1, c).float()
    return out.to(x.dtype).reshape(b, n, c)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim: normalise in fp32, cast back, multiply by ``weight`` [dim].

    ``weight`` is a bare Parameter (no ``operations`` class exists for it); it is cast to the
    input's device and dtype at use, so fp8 storage and offload work.
    """

    def __init__(self, dim: int, eps: float = NORM_EPS, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return normed * _like(self.weight, x)

    def fused_in_place(self, x, parts, part, heads, cos=None, sin=None, rope_offset=0) -> None:
        """The GPU path (``fused_block_reason(x)`` is None): this norm over each head of ``part``
        of x ``[B, N, parts·heads·D]`` (contiguous), in place, then RoPE with rows
        ``rope_offset + n`` of ``cos``/``sin`` unless they are None; same roundings as ``forward``."""
        rms_rope_op(x, parts, part, heads, _like(self.weight, x), cos, sin, rope_offset, self.eps)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos | sin]`` (cos first, as official). t any shape → fp32 ``[*t.shape, dim]``."""
    if dim % 2:
        raise ValueError(f"frequency_embedding_size must be even, got {dim}")
    half = dim // 2
    # Frequencies on the CPU, as the official code computes them: GPU exp differs in the last ulp,
    # which flips bf16 roundings downstream.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t (0..1000 scale) → ``Linear(freq→D) → SiLU → Linear(D→D)`` in fp32. Keys ``mlp.0``, ``mlp.2``."""

    def __init__(self, hidden: int, frequency_embedding_size: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            operations.Linear(frequency_embedding_size, hidden, bias=True, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(hidden, hidden, bias=True, device=device, dtype=dtype),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t ``[B, T]`` fp32 (already bf16-rounded) → fp32 ``[B, T, hidden]``."""
        h = linear_fp32(self.mlp[0], timestep_features(t, self.frequency_embedding_size))
        return linear_fp32(self.mlp[2], F.silu(h))


class CaptionEmbedder(nn.Module):
    """Caption MLP ``Linear → GELU(tanh) → Linear`` in the compute dtype. Keys ``y_proj.0``, ``y_proj.2``."""

    def __init__(self, in_channels: int, hidden: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.y_proj = nn.Sequential(
            operations.Linear(in_channels, hidden, bias=True, device=device, dtype=dtype),
            nn.GELU(approximate="tanh"),
            operations.Linear(hidden, hidden, bias=True, device=device, dtype=dtype),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y ``[B, L, caption_channels]`` → ``[B, L, hidden]``."""
        return self.y_proj(y)


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch; output tokens in T-major raster order. Key ``proj``."""

    def __init__(self, patch_size, in_channels: int, hidden: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.proj = operations.Conv3d(
            in_channels, hidden, kernel_size=patch_size, stride=patch_size, bias=True, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` → ``[B, T·H/ph·W/pw, hidden]``."""
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


def swiglu_hidden(hidden: int, mlp_ratio: float, multiple_of: int = 256) -> int:
    """Official SwiGLU width: ``int(2·ratio·hidden/3)`` rounded up to ``multiple_of`` (4096 → 11008)."""
    width = int(2 * mlp_ratio * hidden / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) ⊙ w3 x)``, no biases. Keys ``w1``, ``w2``, ``w3``."""

    def __init__(self, hidden: int, mlp_ratio: float, device=None, dtype=None, operations=nn):
        super().__init__()
        inner = swiglu_hidden(hidden, mlp_ratio)
        self.w1 = operations.Linear(hidden, inner, bias=False, device=device, dtype=dtype)
        self.w2 = operations.Linear(inner, hidden, bias=False, device=device, dtype=dtype)
        self.w3 = operations.Linear(hidden, inner, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)
        if fused_block_reason(x) is None and gate.is_contiguous() and up.is_contiguous():
            swiglu_op(gate, up)  # silu(gate)·up written over gate
            return self.w2(gate)
        return self.w2(F.silu(gate) * up)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) per frame, LayerNorm, Linear to patch pixels; fp32 (modulated x rounded to x's dtype).

    Keys ``adaLN_modulation.1``, ``linear``; ``norm_final`` has no parameters.
    """

    def __init__(self, hidden: int, t_dim: int, out_features: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.norm_final = operations.LayerNorm(
            hidden, elementwise_affine=False, eps=NORM_EPS, device=device, dtype=dtype
        )
        self.linear = operations.Linear(hidden, out_features, bias=True, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), operations.Linear(t_dim, 2 * hidden, bias=True, device=device, dtype=dtype)
        )

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x ``[B, N, C]``, t_emb fp32 ``[B, T, t_dim]`` (N divisible by T) → fp32 ``[B, N, out]``."""
        shift, scale = linear_fp32(self.adaLN_modulation[1], F.silu(t_emb)).unsqueeze(2).chunk(2, dim=-1)
        # The official modulation returns x's dtype; only then does the fp32 linear run.
        return linear_fp32(self.linear, norm_modulate(self.norm_final, x, shift, scale))


class _CastLinear(nn.Linear):
    applies_weight_scale = True  # scaled fp8 weights (``scaled_fp8.attach_scales``) are dequantized

    def reset_parameters(self):  # weights come from a checkpoint; skip the random init
        return None

    def forward(self, x):
        return F.linear(x, _weight_like(self, x), _like(self.bias, x))


class _CastConv3d(nn.Conv3d):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return self._conv_forward(x, _like(self.weight, x), _like(self.bias, x))


class _CastLayerNorm(nn.LayerNorm):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, _like(self.weight, x), _like(self.bias, x), self.eps)


# ``operations`` for use outside ComfyUI: no random init, weights cast to the input dtype at use
# (so fp8 / mixed-dtype checkpoints run in bf16; scaled fp8 is dequantized), like ComfyUI's
# manual-cast ops.
cast_ops = SimpleNamespace(Linear=_CastLinear, Conv3d=_CastConv3d, LayerNorm=_CastLayerNorm)
