"""Building blocks of the LongCat DiT: norms, embedders, SwiGLU FFN, final layer, fp32 islands.

Every Linear / Conv3d / LayerNorm comes from an injected ``operations`` namespace (``torch.nn`` in
tests, ``comfy.ops.*`` inside ComfyUI) so the loader decides casting, fp8 and offload. Attribute
names follow the official state-dict keys (docs/model.md). Imports nothing from ComfyUI.

The official model runs several parts in fp32 even when its weights are bf16 ("fp32 islands"):
adaLN modulation, the LayerNorms, the timestep embedder and the final layer. ``linear_fp32`` and
``block_kernels.layer_norm_fp32`` reproduce that explicitly (no autocast), casting bf16/fp16/fp8
weights up. The blocks' elementwise work is the injected ``block_kernels`` (torch ops or fused).
"""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .block_kernels import TORCH_KERNELS, casts_itself, like
from .scaled_fp8 import dequantize

NORM_EPS = 1e-6  # every LayerNorm and RMSNorm of the official model


def _weight_like(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer.weight`` on ``x``'s device and in its dtype; a scaled fp8 weight (a
    ``scale_weight`` per output row, see ``scaled_fp8``) is dequantized on the way."""
    scale = getattr(layer, "scale_weight", None)
    if scale is None:
        return like(layer.weight, x)
    return dequantize(layer.weight.to(x.device), scale.to(x.device), x.dtype)


def linear_fp32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in fp32 whatever the weight dtype. x ``[..., in]`` → fp32 ``[..., out]``.

    ComfyUI cast ops are called directly: they cast weights to the input dtype (fp32) and apply
    their weight patches and low-VRAM offload. Other layers get their weights upcast here.
    """
    x = x.float()
    if casts_itself(layer):
        return layer(x)
    return F.linear(x, _weight_like(layer, x), like(layer.bias, x))


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
        return normed * like(self.weight, x)


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

    def __init__(self, hidden: int, mlp_ratio: float, device=None, dtype=None, operations=nn,
                 block_kernels=TORCH_KERNELS):
        super().__init__()
        self.block_kernels = block_kernels
        inner = swiglu_hidden(hidden, mlp_ratio)
        self.w1 = operations.Linear(hidden, inner, bias=False, device=device, dtype=dtype)
        self.w2 = operations.Linear(inner, hidden, bias=False, device=device, dtype=dtype)
        self.w3 = operations.Linear(hidden, inner, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.block_kernels.swiglu(self.w1(x), self.w3(x)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) per frame, LayerNorm, Linear to patch pixels; fp32 (modulated x rounded to x's dtype).

    Keys ``adaLN_modulation.1``, ``linear``; ``norm_final`` has no parameters.
    """

    def __init__(self, hidden: int, t_dim: int, out_features: int, device=None, dtype=None, operations=nn,
                 block_kernels=TORCH_KERNELS):
        super().__init__()
        self.block_kernels = block_kernels
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
        return linear_fp32(self.linear, self.block_kernels.norm_modulate(self.norm_final, x, shift, scale))


class _CastLinear(nn.Linear):
    applies_weight_scale = True  # scaled fp8 weights (``scaled_fp8.attach_scales``) are dequantized

    def reset_parameters(self):  # weights come from a checkpoint; skip the random init
        return None

    def forward(self, x):
        return F.linear(x, _weight_like(self, x), like(self.bias, x))


class _CastConv3d(nn.Conv3d):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return self._conv_forward(x, like(self.weight, x), like(self.bias, x))


class _CastLayerNorm(nn.LayerNorm):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, like(self.weight, x), like(self.bias, x), self.eps)


# ``operations`` for use outside ComfyUI: no random init, weights cast to the input dtype at use
# (so fp8 / mixed-dtype checkpoints run in bf16; scaled fp8 is dequantized), like ComfyUI's
# manual-cast ops.
cast_ops = SimpleNamespace(Linear=_CastLinear, Conv3d=_CastConv3d, LayerNorm=_CastLayerNorm)
