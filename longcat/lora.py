"""LoRA files for the LongCat DiT: official and community formats → per-weight low-rank deltas.

Formats read (keys of a safetensors state dict):

* official (``cfg_step_lora``, ``refinement_lora``): ``lora___lorahyphen___<path>`` with the
  module path's dots written as ``___lorahyphen___``; ``.lora_down.weight`` ``[n·r, in]``;
  ``.lora_up.weight`` ``[out, r]`` or, for fused layers (qkv n=3, kv_linear n=2), the split
  ``.lora_up.blocks.{i}.weight`` ``[out/n, r]``; ``.alpha_scale`` (required) is the scale.
* PEFT / diffusers: ``[diffusion_model.|transformer.]<path>.lora_A.weight`` / ``.lora_B.weight``.
* ComfyUI generic: ``[diffusion_model.]<path>.lora_down.weight`` / ``.lora_up.weight``.
* kohya: ``lora_unet_<path with dots as _>.lora_down.weight`` / ``.lora_up.weight``
  (mapped back to module paths through the model's key list).
* Kijai / ComfyUI (``LongCat_distill_lora_alpha64_bf16``, ``LongCat_refinement_lora_rank128_bf16``):
  the community forms above with Kijai's Wan-style module names (``kijai``), e.g.
  ``diffusion_model.blocks.0.self_attn.q.lora_down.weight``. Each q / k / v (k / v) part becomes
  its row block of the fused official weight: ``up`` is block-diagonal over the parts (zero rows
  for a part the file leaves out), ``down`` stacks their down-projections.
Community formats take scale ``alpha / rank`` from an optional ``.alpha`` key, else 1.

Output: ``{weight_key: LoraDelta}`` with ``weight_key`` the DiT state-dict key
(``blocks.0.attn.qkv.weight``) and ``ΔW = scale · up @ down``; a split up-projection becomes
the block-diagonal ``up`` ``[out, n·r]`` (the official runtime, which chunks ``down(x)`` into n
pieces, computes exactly this product). ``to_comfy_lora_state_dict`` writes the standard
``lora_up/lora_down/alpha`` form that ComfyUI's LoRA loader patches onto weights.
Imports torch and safetensors only (no ComfyUI).
"""

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

from . import kijai
from .scaled_fp8 import dequantize, quantize, scale_key

OFFICIAL_PREFIX = "lora___lorahyphen___"
OFFICIAL_SEP = "___lorahyphen___"
KOHYA_PREFIX = "lora_unet_"
COMMUNITY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")

_OFFICIAL_ROLE = re.compile(r"^(?P<name>.+?)\.(?P<role>lora_down\.weight|lora_up\.weight|"
                            r"lora_up\.blocks\.(?P<block>\d+)\.weight|alpha_scale)$")
_COMMUNITY_ROLE = re.compile(r"^(?P<name>.+)\.(?P<role>lora_A\.weight|lora_B\.weight|"
                             r"lora_down\.weight|lora_up\.weight|alpha)$")
_ROLE_ALIASES = {"lora_A.weight": "down", "lora_B.weight": "up", "lora_down.weight": "down",
                 "lora_up.weight": "up", "alpha": "alpha", "alpha_scale": "alpha_scale"}


class LoraDelta(NamedTuple):
    """One weight's low-rank update ``ΔW = scale · up @ down``; unpacks as ``(up, down, scale)``.

    up: ``[out, R]`` (block-diagonal for split official up-projections); down: ``[R, in]``;
    scale: float (official ``alpha_scale``, or ``alpha / R``).
    """

    up: torch.Tensor
    down: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale · up @ down`` as ``[out, in]``, computed in fp32 and cast to ``dtype``."""
        return (self.scale * (self.up.float() @ self.down.float())).to(dtype)


def _group_keys(lora_sd: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], dict]:
    """Group keys by (format, raw target name) → {role: tensor, 'blocks': {i: tensor}}."""
    groups: dict[tuple[str, str], dict] = {}
    unknown = []
    for key, tensor in lora_sd.items():
        if key.startswith(OFFICIAL_PREFIX):
            fmt, match = "official", _OFFICIAL_ROLE.match(key[len(OFFICIAL_PREFIX):])
        else:
            fmt, match = "community", _COMMUNITY_ROLE.match(key)
        if match is None:
            unknown.append(key)
            continue
        entry = groups.setdefault((fmt, match["name"]), {"blocks": {}})
        if fmt == "official" and match["block"] is not None:
            entry["blocks"][int(match["block"])] = tensor
        else:
            entry[_ROLE_ALIASES[match["role"]]] = tensor
    if unknown:
        raise ValueError(f"lora state dict has {len(unknown)} keys in no known LoRA format, "
                         f"e.g. {sorted(unknown)[:5]}")
    return groups


def _module_path(fmt: str, name: str, kohya_map: dict[str, str] | None) -> str:
    """Raw target name → DiT module path (``blocks.0.attn.qkv``)."""
    if fmt == "official":
        return name.replace(OFFICIAL_SEP, ".")
    if name.startswith(KOHYA_PREFIX):
        if kohya_map is None:
            raise ValueError(f"kohya-style LoRA key {name!r} needs model_shapes to map names back to modules")
        path = kohya_map.get(name[len(KOHYA_PREFIX):])
        if path is None:
            raise ValueError(f"kohya-style LoRA target {name!r} matches no weight of the model")
        return path
    for prefix in COMMUNITY_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _official_up(entry: dict, path: str) -> torch.Tensor:
    """Return the (block-diagonal if split) up matrix of an official entry."""
    blocks = entry["blocks"]
    if "up" in entry and blocks:
        raise ValueError(f"LoRA target {path!r} has both lora_up.weight and lora_up.blocks.*")
    if not blocks:
        if "up" not in entry:
            raise ValueError(f"LoRA target {path!r} is missing lora_up.weight")
        return entry["up"]
    if sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"LoRA target {path!r} has lora_up.blocks {sorted(blocks)}; expected 0..n-1")
    parts = [blocks[i] for i in range(len(blocks))]
    if any(p.shape != parts[0].shape for p in parts):
        raise ValueError(f"LoRA target {path!r}: lora_up.blocks shapes differ: {[tuple(p.shape) for p in parts]}")
    return torch.block_diag(*parts)


def _to_delta(fmt: str, entry: dict, path: str) -> LoraDelta:
    if "down" not in entry:
        raise ValueError(f"LoRA target {path!r} is missing its down projection")
    down = entry["down"]
    up = _official_up(entry, path) if fmt == "official" else entry.get("up")
    if up is None:
        raise ValueError(f"LoRA target {path!r} is missing its up projection")
    if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
        raise ValueError(f"LoRA target {path!r}: up {tuple(up.shape)} and down {tuple(down.shape)} "
                         "do not form [out, R] @ [R, in]")
    if fmt == "official":
        if "alpha_scale" not in entry:
            raise ValueError(f"official LoRA target {path!r} is missing alpha_scale")
        scale = float(entry["alpha_scale"].float().reshape(-1)[0])
    else:
        alpha = entry.get("alpha")
        scale = 1.0 if alpha is None else float(alpha.float().reshape(-1)[0]) / down.shape[0]
    return LoraDelta(up=up, down=down, scale=scale)


def parse_lora(lora_sd: Mapping[str, torch.Tensor],
               model_shapes: Mapping[str, tuple] | None = None) -> dict[str, LoraDelta]:
    """Read a LoRA state dict in any supported format into ``{weight_key: LoraDelta}``.

    lora_sd: the file's tensors. model_shapes: optional ``{dit_key: shape}`` (e.g. from the DiT's
    state dict); when given, every target must be a 2-D weight of the model with
    ``[out, in] == [up.shape[0], down.shape[1]]``. Required for kohya-style names.
    Raises ValueError on unknown keys, missing parts, missing ``alpha_scale`` (official),
    or shape mismatches.
    """
    kohya_map = None
    if model_shapes is not None:
        kohya_map = {k[:-len(".weight")].replace(".", "_"): k[:-len(".weight")]
                     for k in model_shapes if k.endswith(".weight")}
    deltas: dict[str, LoraDelta] = {}
    fused: dict[str, tuple[int, dict[int, LoraDelta]]] = {}  # weight key → (part count, {part: delta})
    for (fmt, name), entry in _group_keys(lora_sd).items():
        path = _module_path(fmt, name, kohya_map)
        delta = _to_delta(fmt, entry, path)
        target = kijai.official_module(path) if fmt == "community" else None
        if target is None or target.parts == 1:
            _add_delta(deltas, (target.module if target else path) + ".weight", delta, model_shapes)
            continue
        count, parts = fused.setdefault(target.module + ".weight", (target.parts, {}))
        if target.part in parts:
            raise ValueError(f"LoRA targets {path!r} twice (mixed key prefixes?)")
        parts[target.part] = delta
    for key, (count, parts) in fused.items():
        _add_delta(deltas, key, _join_parts(key, count, parts), model_shapes)
    if not deltas:
        raise ValueError("lora state dict is empty")
    return deltas


def _add_delta(deltas: dict, key: str, delta: LoraDelta, model_shapes) -> None:
    if key in deltas:
        raise ValueError(f"LoRA targets {key!r} twice (mixed key formats?)")
    if model_shapes is not None:
        _check_target(key, delta, model_shapes)
    deltas[key] = delta


def _join_parts(key: str, count: int, parts: dict) -> LoraDelta:
    """One delta for a fused weight of ``count`` parts from its q / k / v (k / v) part deltas ``{part: delta}``.

    Row block i of ``up`` holds part i's up-projection in its own rank columns (zero rows for a
    missing part), ``down`` stacks the parts' down-projections. Parts with different scales get
    their scale folded into ``up`` (fp32) and the joined scale is 1.
    """
    present = [parts[i] for i in sorted(parts)]
    rows, width = present[0].up.shape[0], present[0].down.shape[1]
    if any(d.up.shape[0] != rows or d.down.shape[1] != width for d in present):
        raise ValueError(f"LoRA parts of {key!r} differ in shape: "
                         f"{[(tuple(d.up.shape), tuple(d.down.shape)) for d in present]}")
    same_scale = len({d.scale for d in present}) == 1
    up = torch.zeros(count * rows, sum(d.rank for d in present),
                     dtype=present[0].up.dtype if same_scale else torch.float32)
    column = 0
    for i in sorted(parts):
        delta = parts[i]
        up[i * rows:(i + 1) * rows, column:column + delta.rank] = (
            delta.up if same_scale else delta.up.float() * delta.scale)
        column += delta.rank
    down = torch.cat([d.down.to(present[0].down.dtype) for d in present])
    return LoraDelta(up=up, down=down, scale=present[0].scale if same_scale else 1.0)


def _check_target(key: str, delta: LoraDelta, model_shapes: Mapping[str, tuple]) -> None:
    if key not in model_shapes:
        if "audio_" in key:
            raise ValueError(f"this LoRA is for LongCat-Video-Avatar (it targets {key!r}, an audio layer): "
                             "apply it to a MODEL from 'Load LongCat-Video-Avatar Model'")
        raise ValueError(f"LoRA target {key!r} is not a weight of the model")
    expected = tuple(model_shapes[key])
    got = (delta.up.shape[0], delta.down.shape[1])
    if len(expected) != 2 or expected != got:
        raise ValueError(f"LoRA target {key!r}: delta shape {got} does not match the weight {expected}")


def load_lora_file(path: str, model_shapes: Mapping[str, tuple] | None = None) -> dict[str, LoraDelta]:
    """Load a ``.safetensors`` LoRA file and ``parse_lora`` it."""
    from safetensors.torch import load_file  # lazy: only needed when reading files

    return parse_lora(load_file(str(path)), model_shapes)


def merge_lora(state_dict: Mapping[str, torch.Tensor], deltas: Mapping[str, LoraDelta],
               strength: float = 1.0) -> dict[str, torch.Tensor]:
    """Return a copy of ``state_dict`` with ``W' = W + strength·scale·up@down`` on each target.

    The official merge formula (docs/pipelines.md, LoRA); the sum is formed in fp32 and cast back to W's
    dtype. A scaled fp8 weight (``scale_weight`` in ``state_dict``) is dequantized, patched and
    re-quantized with its own per-row scale. Call repeatedly to stack LoRAs. Raises ValueError
    for targets not in ``state_dict``.
    """
    missing = sorted(k for k in deltas if k not in state_dict)
    if missing:
        raise ValueError(f"LoRA targets not in the state dict: {missing[:5]}")
    merged = dict(state_dict)
    for key, delta in deltas.items():
        weight = state_dict[key]
        if tuple(weight.shape) != (delta.up.shape[0], delta.down.shape[1]):
            raise ValueError(f"LoRA target {key!r}: delta {(delta.up.shape[0], delta.down.shape[1])} "
                             f"does not match weight {tuple(weight.shape)}")
        update = strength * delta.weight(torch.float32).to(weight.device)
        scale = state_dict.get(scale_key(key))
        if scale is None:
            merged[key] = (weight.float() + update).to(weight.dtype)
        else:
            merged[key] = quantize(dequantize(weight, scale) + update, scale, weight.dtype)
    return merged


def to_comfy_lora_state_dict(deltas: Mapping[str, LoraDelta],
                             prefix: str = "diffusion_model.") -> dict[str, torch.Tensor]:
    """Standard LoRA state dict for ComfyUI's loader: ``<prefix><path>.lora_up/lora_down.weight``, ``.alpha``.

    ComfyUI scales by ``alpha / rank`` with ``rank = lora_down.shape[0]``, so ``alpha = scale·rank``
    reproduces ``scale`` exactly. ``up`` is block-diagonal for split official up-projections.
    """
    out: dict[str, torch.Tensor] = {}
    for key, delta in deltas.items():
        if not key.endswith(".weight"):
            raise ValueError(f"delta keys must be weight keys ending in '.weight', got {key!r}")
        base = prefix + key[:-len(".weight")]
        out[base + ".lora_up.weight"] = delta.up
        out[base + ".lora_down.weight"] = delta.down
        out[base + ".alpha"] = torch.tensor(delta.scale * delta.rank, dtype=torch.float32)
    return out
