"""Load LongCat-Video DiT weights: the official sharded ``dit/`` folder, one safetensors file in the
official layout, Kijai's ComfyUI files (Wan-style names, bf16 or scaled fp8; see ``kijai``), or a
file in ComfyUI's quantized format (fp8 / int8 / nvfp4 layers, in either layout; see ``quant``).

Safetensors only (pickle files are never opened). Every header is validated before any tensor is
read (truncated / corrupt files, non-LongCat checkpoints, missing / unexpected keys, wrong shapes
→ ``ValueError`` naming the first few offenders). Tensors are read one at a time and cast on the
way in (fp8 stays fp8, scaled fp8 and ComfyUI's fp8 / int8 layers keep their weights with one
scale per row: ``scaled_fp8``), then assigned into a meta-device skeleton, so loading never holds a second copy of the model or runs a random init.
Imports nothing from ComfyUI.
"""

import json
import logging
import math
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from . import kijai, quant
from .build import dit_from_state_dict
from .dit import LongCatVideoDiT
from .scaled_fp8 import (
    SCALE_SUFFIX,
    dequantize,
    is_scale_key,
    scale_key,
    weight_key,
)

logger = logging.getLogger(__name__)

# safetensors dtype tags → torch dtypes (those a DiT checkpoint can hold).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I8": torch.int8, "U8": torch.uint8,  # int8: the INT8 Avatar copy, ComfyUI's int8; uint8: nvfp4, comfy_quant
}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16) + FP8_DTYPES
_MAX_HEADER = 100 * 1024 * 1024
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
# Scaled-fp8 bookkeeping that carries no weight: ComfyUI's ``scaled_fp8`` marker tensor and input
# scales (used only by fp8 matrix multiplication; weights here are dequantized per layer).
_FP8_MARKER, _INPUT_SCALE = "scaled_fp8", ".scale_input"
# Kijai's q / k / v parts joined into one Linear cannot keep these per-part tensors (read as extras).
_JOINABLE_FORMATS = quant.SCALED_FORMATS
# Keys that identify other families, for a helpful "this is not LongCat" message.
_OTHER_FAMILIES = {
    "blocks.0.self_attn.q.weight": "Wan 2.x", "patch_embedding.weight": "Wan 2.x",
    "double_blocks.0.img_attn.qkv.weight": "Flux/HunyuanVideo",
    "transformer_blocks.0.attn1.to_q.weight": "a diffusers model",
    "joint_blocks.0.x_block.attn.qkv.weight": "SD3", "input_blocks.0.0.weight": "an SD/SDXL UNet",
}
_SIGNATURE = ("x_embedder.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.cross_attn.kv_linear.weight",
              "final_layer.linear.weight")


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives: file, dtype, shape (from the header, nothing loaded)."""

    file: Path
    name: str  # key inside the file (may carry a prefix)
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_header(path) -> dict:
    """Validated safetensors header of ``path``: ``{name: TensorInfo}`` (no tensor data read).

    Raises ValueError for non-safetensors, truncated or corrupt files, naming the file and tensors.
    """
    path = Path(path)
    header, data_size = _raw_header(path)
    header.pop("__metadata__", None)
    return _parse_entries(path, header, data_size)


def read_metadata(path) -> dict:
    """The header's ``__metadata__`` (string to string; empty when absent)."""
    metadata = _raw_header(Path(path))[0].get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def _raw_header(path: Path) -> tuple[dict, int]:
    """(header JSON, data size) of a safetensors file, checked for being one."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ValueError(f"{path.name}: only .safetensors files are supported (pickle files are never loaded)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path.name}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path.name}: not a safetensors file or truncated (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path.name}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: corrupt safetensors header (not a JSON object)")
    return header, size - 8 - n


def _parse_entries(path: Path, header: dict, data_size: int) -> dict:
    infos, beyond = {}, []
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path.name}: unsupported or corrupt header entry for {name!r}: {entry}") from None
        if end - start != math.prod(shape) * dtype.itemsize or start < 0:
            raise ValueError(f"{path.name}: corrupt header, {name!r} offsets {start}..{end} do not fit shape {shape}")
        if end > data_size:
            beyond.append(name)
        infos[name] = TensorInfo(path, name, dtype, shape)
    if beyond:
        raise ValueError(f"{path.name}: file is truncated ({data_size} data bytes); tensors past the end: "
                         f"{_first(beyond)}")
    return infos


@dataclass(frozen=True)
class QuantLayer:
    """A Linear stored in ComfyUI's quantized format (``quant``): its format, whether its config asks
    for full-precision matrix multiplication, and its tensors besides weight, bias and the fp8 /
    int8 scale, under ComfyUI's names (``input_scale``; nvfp4: ``weight_scale``, ``weight_scale_2``,
    ``pre_quant_scale``)."""

    format: str
    extras: dict
    full_precision: bool = False


@dataclass(frozen=True)
class PackedWeight:
    """An nvfp4 weight: two 4-bit values a byte, so ``shape`` is the Linear's ``[out, in]``."""

    info: TensorInfo

    @property
    def file(self) -> Path:
        return self.info.file

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dtype(self) -> torch.dtype:
        return self.info.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.info.shape[0], 2 * self.info.shape[1])


def _first(names, count: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - count} more)" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def _index_file(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.safetensors.index.json"))
    return found[0] if found else None


def collect_tensors(path) -> dict:
    """``{official key: TensorInfo or kijai.JoinedTensor}`` for a single file, an index json, or a
    folder (official ``dit/``), in the official or Kijai's layout (see ``official_layout``)."""
    return collect_quantized(path)[0]


def collect_quantized(path) -> tuple[dict, dict]:
    """``collect_tensors`` and ``{official Linear path: QuantLayer}`` for ComfyUI-format quantized layers."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"weights path does not exist: {path}")
    if path.is_dir():
        index = _index_file(path)
        if index is None:
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise ValueError(f"{path}: expected a *.safetensors.index.json or exactly one .safetensors file, "
                                 f"found {len(files)} safetensors files")
            path = files[0]
        else:
            path = index
    if path.name.endswith(".index.json"):
        infos, metadata = _read_index(path), {}
    else:
        infos, metadata = read_header(path), read_metadata(path)
    return official_layout(infos, _layer_confs(infos, metadata))


def _layer_confs(infos: dict, metadata: dict) -> dict:
    """``{layer as named in the file: conf}`` from ``_quantization_metadata`` and ``comfy_quant`` tensors."""
    confs = dict(quant.metadata_layers(metadata))
    for name, info in infos.items():
        if name.endswith(quant.CONF_SUFFIX):
            with safe_open(str(info.file), framework="pt") as f:
                conf = quant.conf_from_tensor(name, f.get_tensor(info.name))
            confs.setdefault(name[:-len(quant.CONF_SUFFIX)], conf)
    return confs


def _read_index(index: Path) -> dict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index.name}: not a safetensors index ({err!r})") from None
    infos = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise ValueError(f"{index.name}: shard {shard} is missing from {index.parent}")
        header = read_header(shard_path)
        listed = [k for k, s in weight_map.items() if s == shard]
        absent = [k for k in listed if k not in header]
        if absent:
            raise ValueError(f"{shard}: tensors listed in {index.name} but not in the shard: {_first(absent)}")
        infos.update({k: header[k] for k in listed})
    return infos


def official_layout(infos: dict, confs: dict | None = None) -> tuple[dict, dict]:
    """Header entries → ``(official keys → entries, {official Linear: QuantLayer})``.

    Drops scaled-fp8 bookkeeping (``scaled_fp8``, legacy input scales) and ``comfy_quant`` entries,
    moves a quantized layer's extra tensors into its ``QuantLayer`` (confs: ``{layer: conf}`` as
    named in the file), strips a known wrapper prefix, reads ``weight_scale`` as ``scale_weight``,
    maps Kijai's layout (detected by its keys, never the file name) and turns fp8 / int8 scales
    into per-row scales. Raises ValueError naming the layer and format of a quantized layer the
    loader cannot take.
    """
    infos = {k: v for k, v in infos.items() if k.rpartition(".")[2] != _FP8_MARKER
             and not k.endswith(_INPUT_SCALE) and not k.endswith(quant.CONF_SUFFIX)}
    layers = {layer: _quant_layer(infos, layer, conf) for layer, conf in (confs or {}).items()}
    prefix = _common_prefix(infos)
    infos = {_scale_spelling(k[len(prefix):]): v for k, v in infos.items()}
    layers = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in layers.items()}
    if kijai.is_kijai_layout(infos):
        layers = _kijai_layers(layers)  # first: it names a format mismatch better than a dtype one
        infos = kijai.to_official(infos)
    return _per_row_scales(infos), layers


def _quant_layer(infos: dict, layer: str, conf: dict) -> QuantLayer:
    """Check one ComfyUI-format layer and pop its extra tensors out of ``infos`` (nvfp4: its weight
    becomes a ``PackedWeight``)."""
    name = quant.check_format(layer, conf)
    weight = infos.get(f"{layer}.weight")
    if weight is None:
        raise ValueError(f"{layer}: quantized as {name}, but the file has no {layer}.weight")
    scaled = name in quant.SCALED_FORMATS
    if scaled and weight.dtype != quant.FORMATS[name]:
        raise ValueError(f"{layer}: quantized as {name}, but its weight is stored as {weight.dtype} "
                         f"(expected {quant.FORMATS[name]})")
    if scaled and f"{layer}.weight_scale" not in infos and f"{layer}{SCALE_SUFFIX}" not in infos:
        raise ValueError(f"{layer}: quantized as {name}, but the file has no {layer}.weight_scale")
    extras = {}
    for extra in ("input_scale",) if scaled else ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"):
        if f"{layer}.{extra}" in infos:
            extras[extra] = infos.pop(f"{layer}.{extra}")
    if not scaled:
        if "weight_scale" not in extras or "weight_scale_2" not in extras:
            raise ValueError(f"{layer}: quantized as {name}, but weight_scale / weight_scale_2 are missing")
        infos[f"{layer}.weight"] = PackedWeight(weight)
    return QuantLayer(name, extras, bool(conf.get("full_precision_matrix_mult", False)))


def _kijai_layers(layers: dict) -> dict:
    """Quantized layers renamed like ``kijai.to_official``; q / k / v (k / v) parts join into one
    layer of their common format, without per-part extras (one input scale cannot serve three)."""
    out, parts = {}, {}
    for layer, info in layers.items():
        target = kijai.official_module(layer)
        if target is None:
            out[layer] = info
        elif target.parts == 1:
            out[target.module] = info
        else:
            parts.setdefault(target.module, []).append((layer, info))
    for module, members in parts.items():
        names = {info.format for _, info in members}
        if len(names) > 1 or not names <= set(_JOINABLE_FORMATS):
            listing = ", ".join(f"{layer} {info.format}" for layer, info in members)
            raise ValueError(f"{module}: Kijai-layout parts ({listing}) cannot be joined into one Linear; "
                             f"joinable formats: {', '.join(_JOINABLE_FORMATS)} (all parts alike)")
        out[module] = QuantLayer(names.pop(), {}, any(info.full_precision for _, info in members))
    return out


def _scale_spelling(key: str) -> str:
    return key[:-len(".weight_scale")] + SCALE_SUFFIX if key.endswith(".weight_scale") else key


def _per_row_scales(infos: dict) -> dict:
    """Each ``scale_weight`` (``[]``, ``[out]`` or ``[out, 1]``) as a ``JoinedTensor`` of one value
    per output row of its weight.

    A scale whose weight is absent or not 2-D, or whose size fits neither one value nor one per
    row, is left as is: the key check then reports it.
    """
    out = dict(infos)
    for key, scale in infos.items():
        weight = infos.get(weight_key(key)) if is_scale_key(key) else None
        if weight is None or len(weight.shape) != 2:
            continue
        parts = scale.parts if isinstance(scale, kijai.JoinedTensor) else (scale,)
        rows = weight.rows if isinstance(weight, kijai.JoinedTensor) else (weight.shape[0],)
        if len(parts) == len(rows) and all(math.prod(p.shape) in (1, r) for p, r in zip(parts, rows)):
            out[key] = kijai.JoinedTensor(tuple(parts), tuple(rows), vector=True)
    return out


def _common_prefix(infos: dict) -> str:
    """The known wrapper prefix every key has, or ""."""
    for prefix in _KNOWN_PREFIXES:
        if infos and all(k.startswith(prefix) for k in infos):
            return prefix
    return ""


def check_is_longcat(shapes) -> None:
    """Raise ValueError unless ``shapes`` (keys → anything) looks like a LongCat DiT."""
    missing = [k for k in _SIGNATURE if k not in shapes]
    if not missing:
        return
    family = next((fam for key, fam in _OTHER_FAMILIES.items() if key in shapes), None)
    what = f"looks like {family}" if family else f"first keys: {_first(shapes)}"
    raise ValueError(f"not a LongCat-Video DiT checkpoint ({what}); missing {_first(missing)}")


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def infer_config(state_dict) -> dict:
    """Constructor kwargs of ``LongCatVideoDiT`` from tensor shapes (values: tensors, TensorInfo or shapes)."""
    check_is_longcat(state_dict)
    s = {k: _shape(v) for k, v in state_dict.items()}
    hidden, in_channels, *patch = s["x_embedder.proj.weight"]
    head_dim = s["blocks.0.attn.q_norm.weight"][0]
    depth = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    final_out = s["final_layer.linear.weight"][0]
    if final_out % math.prod(patch):
        raise ValueError(f"final_layer.linear.weight rows {final_out} not divisible by patch {tuple(patch)}")
    return {
        "in_channels": in_channels, "out_channels": final_out // math.prod(patch), "hidden_size": hidden,
        "depth": depth, "num_heads": hidden // head_dim, "caption_channels": s["y_embedder.y_proj.0.weight"][1],
        "mlp_ratio": 4, "adaln_tembed_dim": s["t_embedder.mlp.0.weight"][0],
        "frequency_embedding_size": s["t_embedder.mlp.0.weight"][1], "patch_size": tuple(patch),
    }


def expected_shapes(config: dict) -> dict:
    """``{key: shape}`` of a model with ``config``, from a meta-device skeleton (no memory)."""
    model = LongCatVideoDiT(**config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(shapes, config: dict) -> None:
    """Raise ValueError naming missing, unexpected and wrong-shaped keys (first few of each).

    A ``scale_weight`` (scaled fp8) is expected as ``[out]`` next to any 2-D weight.
    """
    want = expected_shapes(config)
    have = {k: _shape(v) for k, v in shapes.items()}
    for key in filter(is_scale_key, have):
        if len(want.get(weight_key(key), ())) == 2:
            want[key] = (want[weight_key(key)][0],)
    problems = []
    if missing := [k for k in want if k not in have and not is_scale_key(k)]:
        problems.append(f"missing {len(missing)}: {_first(missing)}")
    if unexpected := [k for k in have if k not in want]:
        problems.append(f"unexpected {len(unexpected)}: {_first(unexpected)}")
    if wrong := [f"{k} {have[k]} != {want[k]}" for k in want if k in have and have[k] != want[k]]:
        problems.append(f"wrong shape {len(wrong)}: {'; '.join(wrong[:5])}")
    if problems:
        raise ValueError("LongCat DiT checkpoint does not match the model: " + " | ".join(problems))


def storage_dtype(name: str, shape, dtype: torch.dtype | None, source: torch.dtype,
                  fp8_linear: bool = True) -> torch.dtype:
    """Dtype a tensor is stored in for a requested model ``dtype`` (None = keep the file's).

    fp8 applies to 2-D Linear weights only; biases, norms and the patch conv stay bf16 (small,
    and precision-sensitive), as in common fp8 DiT files. fp8_linear=False (the unscaled tensors
    of a scaled fp8 checkpoint, whose maker left them unquantized): bf16 for an fp8 dtype.
    """
    if dtype is None:
        return source
    if dtype in FP8_DTYPES and not (fp8_linear and name.endswith(".weight") and len(shape) == 2):
        return torch.bfloat16
    return dtype


def cast_tensor(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast, clamping to the fp8 range first (fp32 → e4m3fn would otherwise give NaN past ±448)."""
    if dtype == tensor.dtype:
        return tensor
    if dtype in FP8_DTYPES and tensor.dtype not in FP8_DTYPES:
        limit = torch.finfo(dtype).max
        tensor = tensor.clamp(-limit, limit)
    return tensor.to(dtype)


def _check_dtype(dtype):
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be None or one of {STORAGE_DTYPES}, got {dtype}")


def inspect_checkpoint(path) -> tuple[dict, dict]:
    """``({official key: TensorInfo}, DiT config)`` of a file / index / ``dit/`` folder, validated
    from the headers alone (no tensor data but ComfyUI's small ``comfy_quant`` entries).

    Raises ValueError for bad files, non-LongCat checkpoints and key/shape mismatches.
    """
    return inspect_quantized(path)[:2]


def inspect_quantized(path) -> tuple[dict, dict, dict]:
    """``inspect_checkpoint`` plus ``{official Linear path: QuantLayer}`` of ComfyUI-format
    quantized layers (empty for other files). Raises ValueError naming layer and format when a
    quantized layer is not one of the model's Linears."""
    infos, layers = collect_quantized(path)
    if "audio_proj.proj1.weight" in infos:
        raise ValueError(f"{Path(path).name} is a LongCat-Video-Avatar checkpoint: load it with "
                         "'Load LongCat-Video-Avatar Model'")
    config = infer_config(infos)
    shapes = expected_shapes(config)
    for layer, info in layers.items():
        if len(shapes.get(f"{layer}.weight", ())) != 2:
            raise ValueError(f"{layer}: quantized as {info.format}, but the LongCat DiT has no Linear "
                             f"named {layer}")
    check_keys(infos, config)
    return infos, config, layers


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a loaded state dict: where it is stored, its dtype once loaded, and for a
    scaled fp8 weight loaded in another dtype the per-row scale to dequantize it with.

    For a file being written (``convert``): quantize ``"tensor"`` / ``"row"`` quantizes the tensor
    to ``dtype`` with one scale per tensor / row (``quant.quantize``), and the entry right after
    it, ``scale_of`` that key, is that scale; out_shape replaces the source's shape (a reshape).
    """

    key: str
    source: object  # TensorInfo or kijai.JoinedTensor (None for a scale_of entry)
    dtype: torch.dtype
    scale: object = None
    quantize: str | None = None
    scale_of: str | None = None
    out_shape: tuple | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.out_shape if self.out_shape is not None else self.source.shape)


def plan_tensors(infos: dict, dtype: torch.dtype | None = None) -> list[PlannedTensor]:
    """How each tensor of ``infos`` (from ``inspect_checkpoint``) is loaded for ``dtype``, grouped by file.

    Scaled fp8 / int8 weights stay as stored with their per-row scales (fp32) for dtype None or any
    fp8 dtype (re-quantizing them only loses precision); bf16 / fp16 / fp32 dequantizes them.
    nvfp4 weights load only as stored (dtype None): ComfyUI's ops unpack them.
    """
    _check_dtype(dtype)
    if dtype is not None and (packed := [k for k, v in infos.items() if isinstance(v, PackedWeight)]):
        raise ValueError(f"{packed[0].rpartition('.')[0]}: nvfp4 weights cannot be loaded as {dtype}; keep the file's dtypes "
                         "(weight_dtype default), ComfyUI's mixed-precision ops dequantize them per layer")
    scaled = {weight_key(k) for k in infos if is_scale_key(k)}
    keep_scaled = dtype is None or dtype in FP8_DTYPES
    plan = []
    for key, source in sorted(infos.items(), key=lambda item: (str(item[1].file), item[0])):
        if is_scale_key(key):
            if keep_scaled:
                plan.append(PlannedTensor(key, source, torch.float32))
        elif key in scaled:
            scale = None if keep_scaled else infos[scale_key(key)]
            plan.append(PlannedTensor(key, source, source.dtype if keep_scaled else dtype, scale))
        else:
            target = storage_dtype(key, source.shape, dtype, source.dtype, fp8_linear=not scaled)
            plan.append(PlannedTensor(key, source, target))
    return plan


def iter_planned(plan: list[PlannedTensor], device="cpu"):
    """Yield ``(key, tensor)`` for each planned tensor, read, joined, dequantized and cast one at a
    time (each file opened once), so a caller that writes tensors out holds about one at a time."""
    with ExitStack() as stack:
        handles = {}

        def get(info):
            if info.file not in handles:
                handles[info.file] = stack.enter_context(safe_open(str(info.file), framework="pt", device=str(device)))
            return handles[info.file].get_tensor(info.name)

        def read(source):
            return source.read(get) if isinstance(source, kijai.JoinedTensor) else get(source)

        made_scale = None  # the scale of the weight quantized just before
        for entry in plan:
            if entry.scale_of is not None:
                yield entry.key, made_scale.reshape(entry.shape)
                made_scale = None
                continue
            tensor = read(entry.source)
            if entry.scale is not None:
                tensor = dequantize(tensor, read(entry.scale))
            if entry.quantize is not None:
                tensor, made_scale = quant.quantize(tensor, entry.dtype, per_row=entry.quantize == "row")
            else:
                tensor = cast_tensor(tensor, entry.dtype)
            if entry.out_shape is not None:
                tensor = tensor.reshape(entry.out_shape)
            yield entry.key, tensor
            del tensor  # released before the next read


def read_tensors(infos: dict, dtype: torch.dtype | None = None, device="cpu") -> dict:
    """State dict of the tensors ``infos`` (from ``inspect_checkpoint``) locates, cast tensor by tensor.

    dtype: None keeps the file's dtypes; bf16/fp16/fp32, or fp8 (e4m3fn / e5m2) for Linear weights
    (see ``plan_tensors`` for scaled fp8 checkpoints).
    """
    state = dict(iter_planned(plan_tensors(infos, dtype), device))
    files = sorted({Path(info.file).name for info in infos.values()})
    logger.info("loaded %d LongCat DiT tensors from %s", len(state), ", ".join(files))
    return state


def load_state_dict(path, dtype: torch.dtype | None = None, device="cpu") -> dict:
    """Validated official-key state dict from a file / index / ``dit/`` folder, cast tensor by tensor.

    dtype: None keeps the file's dtypes; bf16/fp16/fp32, or fp8 (e4m3fn / e5m2) for Linear weights.
    Raises ValueError for a bad dtype (before any file is opened), bad files, non-LongCat
    checkpoints and key/shape mismatches.
    """
    _check_dtype(dtype)
    infos, _ = inspect_checkpoint(path)
    return read_tensors(infos, dtype, device)


def read_text_tokens_zero_pad(path) -> bool:
    """``text_tokens_zero_pad`` from the official ``dit/config.json`` (folder or index input), default True."""
    path = Path(path)
    if not (path.is_dir() or path.name.endswith(".index.json")):
        return True  # a single file carries no config; the published value applies
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        return True
    try:
        return bool(json.loads(config.read_text()).get("text_tokens_zero_pad", True))
    except ValueError as err:
        raise ValueError(f"{config}: invalid JSON ({err})") from None


def load_dit(path, dtype: torch.dtype | None = None, device="cpu", operations=None, attention=None,
             block_kernels="auto") -> LongCatVideoDiT:
    """Build a ``LongCatVideoDiT`` from weights without a random init or a second copy in RAM
    (``build.dit_from_state_dict``: scaled fp8 scales attached, tensors assigned).

    operations: default ``layers.cast_ops`` (weights cast to the input dtype at use, so fp8 and
    mixed-dtype files run; scaled fp8 weights are dequantized per layer). block_kernels: "auto"
    (the fused block kernels on a CUDA ``device``, torch ops elsewhere), "fused" or "torch".
    """
    infos, config, layers = inspect_quantized(path)
    if packed := [layer for layer, info in layers.items() if info.format == "nvfp4"]:
        raise ValueError(f"{packed[0]}: nvfp4 weights load only inside ComfyUI "
                         f"({quant.COMFYUI_NEEDED['nvfp4']} or newer), through its mixed-precision ops")
    state = read_tensors(infos, dtype, device)
    config["text_tokens_zero_pad"] = read_text_tokens_zero_pad(path)
    return dit_from_state_dict(state, config, operations=operations, attention=attention,
                               block_kernels=block_kernels)
