"""``comfy.ops`` for a LongCat MODEL with quantized weights: Kijai-style scaled fp8 with per-row
scales (``longcat.scaled_fp8``), and ComfyUI's mixed-precision ops for its own quantized format
(``mixed_precision_ops``, at the end).

Kijai's scaled fp8 file keeps one scale per q / k / v tensor; joined into the official fused
``qkv`` (``kv_linear``) they become one fp32 scale per output row (``scale_weight [out]``).
ComfyUI's own scaled-fp8 ops cannot take that: 0.3.x's ``scaled_fp8_ops`` multiplies the input
by the scale when that is cheaper (one value only) and 0.8 replaced it by per-tensor quantized
tensors. So this Linear, a ``manual_cast`` Linear (cast per layer, lowvram offload and weight
patches as usual), dequantizes ``weight · scale`` in fp32, rounds once to the compute dtype and
runs the matmul there: exact, the default. ``scaled_fp8_ops(fp8_matmul=True)`` instead multiplies
float8_e4m3fn layers on fp8 tensor cores (``longcat.scaled_fp8.fp8_matmul``: activations
quantized per token, the weights' row scales kept) when the input is bf16 and no weight patch is
active; the loader turns it on only where the GPU has fp8 matrix multiplication.

LoRA and other weight patches see the dequantized weight: ``convert_weight`` / ``set_weight``
(used when ComfyUI patches weights in place) dequantize, then re-quantize the patched weight
with the layer's own scales (stochastic rounding, as ComfyUI does for fp8), and a lowvram
patch (``LowVramPatch``, applied at each forward) is computed on the dequantized weight in the
compute dtype, as 0.8's ``LowVramPatch`` does (0.3.x's would round-trip it through fp8).
"""

import comfy.float
import comfy.ops
import torch

from ..longcat.scaled_fp8 import dequantize, fp8_matmul


def _patched(functions, weight: torch.Tensor) -> torch.Tensor:
    """Apply a layer's weight functions to its dequantized weight."""
    # Imported here: comfy.lora pulls in every ComfyUI model (and scipy, ...), which the
    # quantization bench, running on comfy.ops alone, cannot import.
    import comfy.lora
    import comfy.model_patcher

    for function in functions:
        if isinstance(function, comfy.model_patcher.LowVramPatch):
            weight = comfy.lora.calculate_weight(function.patches[function.key], weight, function.key,
                                                 intermediate_dtype=weight.dtype)
        else:
            weight = function(weight)
    return weight


class ScaledFP8Ops(comfy.ops.manual_cast):
    """``operations`` for ``LongCatVideoDiT`` when the state dict has ``scale_weight`` keys."""

    class Linear(comfy.ops.manual_cast.Linear):
        applies_weight_scale = True  # see longcat.scaled_fp8.attach_scales
        fp8_matmul = False

        def forward_comfy_cast_weights(self, input, *args, **kwargs):
            scale = getattr(self, "scale_weight", None)
            if scale is None:
                return super().forward_comfy_cast_weights(input, *args, **kwargs)
            if (self.fp8_matmul and self.weight.dtype == torch.float8_e4m3fn and input.dtype == torch.bfloat16
                    and not self.weight_function and not self.bias_function):
                bias = None if self.bias is None else self.bias.to(input.device)
                return fp8_matmul(input, self.weight.to(input.device), scale.to(input.device), bias)
            weight = dequantize(self.weight.to(input.device), scale.to(input.device), input.dtype)
            weight = _patched(self.weight_function, weight)
            bias = None
            if self.bias is not None:
                bias = self.bias.to(device=input.device, dtype=input.dtype)
                for function in self.bias_function:
                    bias = function(bias)
            return torch.nn.functional.linear(input, weight, bias)

        # ComfyUI looks these up with getattr when it patches a weight in place. Layers without a
        # scale raise AttributeError, so ComfyUI treats them exactly as stock manual_cast layers.
        @property
        def convert_weight(self):
            if getattr(self, "scale_weight", None) is None:
                raise AttributeError("convert_weight: layer has no scale_weight")
            return self._dequantize_for_patch

        @property
        def set_weight(self):
            if getattr(self, "scale_weight", None) is None:
                raise AttributeError("set_weight: layer has no scale_weight")
            return self._quantize_patched

        def _dequantize_for_patch(self, weight, inplace=False, **kwargs):
            return dequantize(weight, self.scale_weight.to(weight.device), weight.dtype)

        def _quantize_patched(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
            weight = weight.float() / self.scale_weight.to(weight.device).float().reshape(-1, 1)
            weight = comfy.float.stochastic_rounding(weight, self.weight.dtype, seed=seed)
            if return_weight:
                return weight
            if inplace_update:
                self.weight.data.copy_(weight)
            else:
                self.weight = torch.nn.Parameter(weight, requires_grad=False)


def scaled_fp8_ops(fp8_matmul: bool = False):
    """``ScaledFP8Ops``, or a copy whose scaled float8_e4m3fn Linears multiply in fp8."""
    if not fp8_matmul:
        return ScaledFP8Ops

    class ScaledFP8MatmulOps(ScaledFP8Ops):
        class Linear(ScaledFP8Ops.Linear):
            fp8_matmul = True

    return ScaledFP8MatmulOps


def mixed_precision_ops(compute_dtype, full_precision_mm: bool, disabled):
    """ComfyUI's ``comfy.ops.mixed_precision_ops`` for a LongCat DiT (ComfyUI 0.8.0 and newer).

    full_precision_mm: every quantized layer dequantized while it runs and multiplied in
    ``compute_dtype``; ComfyUI does that for fp8 / nvfp4 but still multiplies int8 weights in
    int8 (its kernel quantizes the activations), so here the weight is dequantized first: exact.
    disabled: formats the device cannot multiply in (dequantized the same way).
    """
    import comfy.quant_ops

    base = comfy.ops.mixed_precision_ops({"mixed_ops": True}, compute_dtype, full_precision_mm=full_precision_mm,
                                         disabled=disabled)

    class LongCatMixedPrecisionOps(base):
        class Linear(base.Linear):
            def _forward(self, input, weight, bias):
                if self._full_precision_mm and isinstance(weight, comfy.quant_ops.QuantizedTensor):
                    weight = weight.dequantize().to(input.dtype)
                return super()._forward(input, weight, bias)

    return LongCatMixedPrecisionOps
