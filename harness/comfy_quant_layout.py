"""Tiny files in ComfyUI's quantized format, built from an official state dict for the tests.

Written independently of ``longcat/quant.py`` and the converter: a quantized layer is
``<layer>.weight`` (fp8 / int8) with ``<layer>.weight_scale`` (one value, or ``[out, 1]`` per
row), optionally ``<layer>.input_scale``, and its format is declared in the header's
``_quantization_metadata`` or by a ``<layer>.comfy_quant`` uint8 JSON tensor.
"""

import json

import torch
from kijai_layout import is_fp8_linear, split_parts

LIMITS = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}
FORMAT_NAMES = {torch.float8_e4m3fn: "float8_e4m3fn", torch.int8: "int8_tensorwise"}


def quantize_by_hand(weight: torch.Tensor, dtype: torch.dtype, per_row: bool):
    """(stored, scale) with weight ≈ stored · scale; scale ``[]`` or ``[out, 1]``."""
    w = weight.float()
    amax = w.abs().amax(1, keepdim=True) if per_row else w.abs().max()
    scale = amax.clamp(min=1e-12) / LIMITS[dtype]
    q = w / scale
    q = q.round().clamp(-127, 127).to(dtype) if dtype == torch.int8 else q.to(dtype)
    return q, scale


def conf_bytes(conf: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)


def to_comfy_quant(official: dict, dtype: torch.dtype, per_row=False, kijai=False, in_tensors=False,
                   prefix="", input_scale=None):
    """(state dict, header metadata, official fp32 state dict it dequantizes to).

    The block Linears (Kijai: each q / k / v part on its own) are quantized; the rest is bf16.
    in_tensors: declare formats by ``comfy_quant`` tensors instead of ``_quantization_metadata``.
    input_scale: a value written as every quantized layer's ``input_scale``.
    """
    name = FORMAT_NAMES[dtype]
    state, layers, dequantized = {}, {}, {}
    for key, value in official.items():
        parts = split_parts(key, value) if kijai else {key: value}
        if not is_fp8_linear(key):
            state.update({k: v.bfloat16() for k, v in parts.items()})
            dequantized[key] = value.bfloat16().float()
            continue
        pieces = []
        for part_key, part in parts.items():
            q, scale = quantize_by_hand(part, dtype, per_row)
            layer = part_key[:-len(".weight")]
            state[part_key], state[f"{layer}.weight_scale"] = q, scale
            if input_scale is not None:
                state[f"{layer}.input_scale"] = torch.tensor(input_scale)
            layers[layer] = {"format": name}
            pieces.append(q.float() * scale)
        dequantized[key] = torch.cat(pieces)
    state = {prefix + k: v.contiguous() for k, v in state.items()}
    layers = {prefix + k: v for k, v in layers.items()}
    if in_tensors:
        state.update({f"{layer}.comfy_quant": conf_bytes(conf) for layer, conf in layers.items()})
        return state, {}, dequantized
    return state, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}, dequantized
