"""``comfy.ops`` for a LongCat MODEL whose Linears hold scaled fp8 weights (``longcat.scaled_fp8``).

Kijai's scaled fp8 file keeps one scale per q / k / v tensor; joined into the official fused
``qkv`` (``kv_linear``) they become one fp32 scale per output row (``scale_weight [out]``).
ComfyUI's own scaled-fp8 ops cannot take that: 0.3.x's ``scaled_fp8_ops`` multiplies the input
by the scale when that is cheaper (one value only) and 0.8 replaced it by per-tensor quantized
tensors. So this Linear, a ``manual_cast`` Linear (cast per layer, lowvram offload and weight
patches as usual), dequantizes ``weight · scale`` in fp32, rounds once to the compute dtype and
runs the matmul there; fp8 matrix multiplication is not used for these layers.

LoRA and other weight patches see the dequantized weight: ``convert_weight`` / ``set_weight``
(used when ComfyUI patches weights in place) dequantize, then re-quantize the patched weight
with the layer's own scales (stochastic rounding, as ComfyUI does for fp8), and a lowvram
patch (``LowVramPatch``, applied at each forward) is computed on the dequantized weight in the
compute dtype, as 0.8's ``LowVramPatch`` does (0.3.x's would round-trip it through fp8).
"""

import comfy.float
import comfy.lora
import comfy.model_patcher
import comfy.ops
import torch

from ..longcat.scaled_fp8 import dequantize


def _patched(functions, weight: torch.Tensor) -> torch.Tensor:
    """Apply a layer's weight functions to its dequantized weight."""
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

        def forward_comfy_cast_weights(self, input, *args, **kwargs):
            scale = getattr(self, "scale_weight", None)
            if scale is None:
                return super().forward_comfy_cast_weights(input, *args, **kwargs)
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
