"""Scaled fp8 weights: fp8 values with one fp32 scale per output row; the real weight is ``fp8 · scale``.

Kijai's ``…_fp8_e4m3fn_scaled_KJ`` file stores each block Linear in float8_e4m3fn with one
per-tensor ``scale_weight``. Joining q, k, v into the official ``attn.qkv`` (k, v into
``cross_attn.kv_linear``) puts three tensors with three different scales into one weight, so a
loaded model keeps a scale per output row: ``<linear>.scale_weight``, fp32 ``[out]``. This is
exact (the fp8 values are not re-quantized), keeps one Linear per official module (state-dict
keys, LoRA targets and patches stay those of the official model), and the weights stay fp8 in
memory: a layer is dequantized only while it runs. Imports nothing from ComfyUI.
"""

import torch
from torch import nn

SCALE_SUFFIX = ".scale_weight"


def is_scale_key(key: str) -> bool:
    return key.endswith(SCALE_SUFFIX)


def scale_key(weight_key: str) -> str:
    """``blocks.0.attn.qkv.weight`` → ``blocks.0.attn.qkv.scale_weight``."""
    return weight_key[:-len(".weight")] + SCALE_SUFFIX


def weight_key(scale_key: str) -> str:
    """``blocks.0.attn.qkv.scale_weight`` → ``blocks.0.attn.qkv.weight``."""
    return scale_key[:-len(SCALE_SUFFIX)] + ".weight"


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``weight · scale`` per output row, formed in fp32 and rounded once to ``dtype``.

    weight ``[out, in]`` (fp8 or any float); scale ``[out]`` or one value, on weight's device.
    """
    return (weight.float() * scale.float().reshape(-1, 1)).to(dtype)


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (weight · scale)ᵀ + bias`` on fp8 tensor cores; the fast, inexact sibling of ``dequantize``.

    x ``[..., in]`` bf16; weight ``[out, in]`` float8_e4m3fn with scale ``[out]`` (or one value).
    x is quantized to e4m3fn with one scale per row (token, ``amax / 448``), so no activation
    clips; ``torch._scaled_mm`` with row-wise scales on both sides (fp32 accumulation) returns
    bf16. Costs one pass over x; the result differs from the exact product by fp8's rounding of x.
    """
    rows = x.reshape(-1, x.shape[-1])
    x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
    x_fp8 = (rows / x_scale.to(rows.dtype)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    w_scale = scale.float().reshape(1, -1).expand(1, weight.shape[0]).contiguous()
    out = torch._scaled_mm(x_fp8, weight.t(), scale_a=x_scale, scale_b=w_scale,
                           bias=None if bias is None else bias.to(x.dtype), out_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def quantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``dequantize`` for a changed weight (a merged LoRA): ``weight / scale`` per row,
    clamped to ``dtype``'s range (fp8 would give NaN past it) and rounded to nearest."""
    limit = torch.finfo(dtype).max
    return (weight.float() / scale.float().reshape(-1, 1)).clamp(-limit, limit).to(dtype)


def attach_scales(model: nn.Module, scale_keys) -> None:
    """Give each Linear named by ``scale_keys`` an empty (meta) fp32 ``scale_weight [out]`` to load into.

    Raises ValueError when a layer's class does not apply the scale in its forward (class
    attribute ``applies_weight_scale``): such a model would silently compute with raw fp8 values.
    """
    for key in scale_keys:
        layer = model.get_submodule(key[:-len(SCALE_SUFFIX)])
        if not getattr(layer, "applies_weight_scale", False):
            raise ValueError(f"{key}: the checkpoint has scaled fp8 weights but {type(layer).__name__} "
                             "does not apply scale_weight; build the model with longcat.layers.cast_ops "
                             "(the default) or load with a bf16 / fp16 / fp32 dtype to dequantize")
        scale = torch.empty(layer.out_features, device="meta", dtype=torch.float32)
        layer.register_parameter("scale_weight", nn.Parameter(scale, requires_grad=False))
