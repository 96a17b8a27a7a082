"""ComfyUI's quantized-checkpoint format for the LongCat DiT: which layers are quantized and how,
and the quantizers the converter writes with. Imports nothing from ComfyUI.

ComfyUI (0.8.0 and newer; int8 since 0.33.0) stores a quantized Linear as ``<layer>.weight``
(fp8, int8, or nvfp4 packed two values a byte) with ``<layer>.weight_scale`` and optionally
``<layer>.input_scale``; nvfp4 adds ``weight_scale_2`` (and may add ``pre_quant_scale``). Which
layers are quantized, and in which format, is said either in the header's ``__metadata__``
entry ``_quantization_metadata`` (``{"format_version": "1.0", "layers": {layer: {"format":
...}}}``) or by a ``<layer>.comfy_quant`` tensor per layer (the same JSON as uint8 bytes). Its
mixed-precision ops run such a layer in its format where the GPU can (fp8: Ada / Hopper /
Blackwell; nvfp4: Blackwell; int8: Turing and newer) and otherwise dequantize it while it runs
(the weight stays quantized in memory).

The real weight of an fp8 / int8 layer is ``weight · weight_scale``: one scale for the tensor, or
here also one per output row (``[out, 1]``; see ``quantize``).
"""

import json

import torch

METADATA_KEY = "_quantization_metadata"
CONF_SUFFIX = ".comfy_quant"
# Formats the LongCat loader takes, and the dtype their weight is stored in.
FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
           "int8_tensorwise": torch.int8, "nvfp4": torch.uint8}
# Formats whose weight is one stored value per element times a scale (per tensor or per row).
SCALED_FORMATS = ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise")
# The oldest ComfyUI release tested with each format's mixed-precision ops.
COMFYUI_NEEDED = {"float8_e4m3fn": "0.8.0", "float8_e5m2": "0.8.0", "nvfp4": "0.8.0",
                  "int8_tensorwise": "0.33.0"}
# Tensors of a quantized layer besides weight and bias (ComfyUI's names).
LAYER_EXTRAS = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "comfy_quant")

# The Linears the converter quantizes, inside ``blocks.N``: attention, cross-attention and FFN,
# 96 % of the parameters. The rest stays bf16, see KEPT_BF16.
QUANTIZED_LINEARS = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
                     "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")
KEPT_BF16 = (
    "norms (q/k RMSNorm, cross-attention LayerNorm): tiny, and they scale every activation",
    "embedders (patch, timestep, caption): tiny, run once per step, feed every block",
    "adaLN modulation (per block and final): computed in fp32 by the model; small errors here "
    "shift and scale whole feature maps",
    "final layer: produces the velocity itself, and is 0.01 % of the parameters",
    "biases: one value per output, negligible size",
)

_FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
_INT8_MAX = 127.0


def is_quantized_linear(weight_key: str) -> bool:
    """True for ``blocks.N.<one of QUANTIZED_LINEARS>.weight`` (official keys)."""
    parts = weight_key.split(".")
    return (len(parts) >= 4 and parts[0] == "blocks" and parts[1].isdigit() and parts[-1] == "weight"
            and ".".join(parts[2:-1]) in QUANTIZED_LINEARS)


def format_of(dtype: torch.dtype) -> str:
    """ComfyUI format name of a scaled weight dtype (fp8 e4m3fn / e5m2, int8)."""
    for name in SCALED_FORMATS:
        if FORMATS[name] == dtype:
            return name
    raise ValueError(f"no ComfyUI scaled format stores {dtype}")


def _scale_from_amax(amax: torch.Tensor, limit: float) -> torch.Tensor:
    """``amax / limit`` rounded to bf16 (1.0 for an all-zero row).

    ComfyUI dequantizes fp8 as ``weight.to(bf16) * scale.to(bf16)``; with a bf16-exact scale that
    equals ``(weight · scale)`` formed in fp32 and rounded once, our exact dequantization."""
    scale = (amax.float() / limit).bfloat16().float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize(weight: torch.Tensor, dtype: torch.dtype, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(stored weight, weight_scale)`` of a 2-D weight in fp8 (e4m3fn / e5m2) or int8.

    per_row: one scale per output row, ``[out, 1]`` fp32 (the shape ComfyUI's dequantization
    broadcasts); else one scalar ``[]``. fp8 rounds to nearest after clamping to the format's
    range; int8 rounds half to even and clamps to ±127 (symmetric, as ComfyUI's int8).
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize: expected a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax()
    if dtype in _FP8_MAX:
        limit = _FP8_MAX[dtype]
        scale = _scale_from_amax(amax, limit)
        return (w / scale).clamp(-limit, limit).to(dtype), scale
    if dtype == torch.int8:
        scale = torch.where(amax > 0, amax / _INT8_MAX, torch.ones_like(amax))
        return torch.round(w / scale).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8), scale
    raise ValueError(f"quantize: dtype must be fp8 e4m3fn / e5m2 or int8, got {dtype}")


def conf_tensor(conf: dict) -> torch.Tensor:
    """A layer's ``comfy_quant`` tensor: its JSON as uint8 bytes, as ComfyUI writes it."""
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def conf_from_tensor(name: str, tensor: torch.Tensor) -> dict:
    try:
        conf = json.loads(bytes(tensor.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{name}: not a ComfyUI quantization entry (bytes are not JSON)") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{name}: not a ComfyUI quantization entry ({conf!r})")
    return conf


def metadata_layers(metadata: dict) -> dict:
    """``{layer: conf}`` from a header's ``__metadata__`` (empty when it has no quantization entry)."""
    raw = (metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        layers = json.loads(raw)["layers"]
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"__metadata__[{METADATA_KEY!r}] is not ComfyUI quantization metadata") from None
    if not isinstance(layers, dict) or not all(isinstance(c, dict) for c in layers.values()):
        raise ValueError(f"__metadata__[{METADATA_KEY!r}]: 'layers' must map layer names to objects")
    return layers


def metadata_entry(layers: dict) -> str:
    """The ``_quantization_metadata`` string for ``{layer: conf}``."""
    return json.dumps({"format_version": "1.0", "layers": layers}, separators=(",", ":"))


def check_format(layer: str, conf: dict) -> str:
    """The layer's format, or ValueError naming layer and format when the loader cannot take it."""
    name = conf.get("format")
    if name not in FORMATS:
        raise ValueError(f"{layer}: quantization format {name!r} is not supported for LongCat "
                         f"(supported: {', '.join(FORMATS)})")
    if conf.get("convrot", (conf.get("params") or {}).get("convrot", False)):
        raise ValueError(f"{layer}: {name} with ConvRot rotation is not supported for LongCat")
    return name
