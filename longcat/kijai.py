"""Kijai's ComfyUI layout of LongCat-Video (Wan 2.x-style names), mapped onto the official one.

Kijai's files (Hugging Face ``Kijai/LongCat-Video_comfy``: the DiT in bf16 or scaled fp8, the
distill and refinement LoRAs) name modules as Wan 2.x does and keep self-attention q/k/v and
cross-attention k/v as separate Linears, which the official model fuses into ``attn.qkv`` and
``cross_attn.kv_linear``. A part's rows sit in the fused weight in the order the official
forward splits it (q, k, v and k, v). ``weights`` reads DiT files through ``to_official``;
``lora`` and the ComfyUI LoRA key map use the module-name mapping. Imports nothing from ComfyUI.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

# Module paths, Kijai → official. Top level, then inside ``blocks.N``.
TOP_LEVEL = {
    "patch_embedding": "x_embedder.proj",
    "time_embedding.mlp.0": "t_embedder.mlp.0", "time_embedding.mlp.2": "t_embedder.mlp.2",
    "text_embedding.0": "y_embedder.y_proj.0", "text_embedding.2": "y_embedder.y_proj.2",
    "head.head": "final_layer.linear", "head.modulation.1": "final_layer.adaLN_modulation.1",
}
PER_BLOCK = {
    "modulation.1": "adaLN_modulation.1",
    "self_attn.o": "attn.proj", "self_attn.norm_q": "attn.q_norm", "self_attn.norm_k": "attn.k_norm",
    "norm3": "pre_crs_attn_norm",
    "cross_attn.q": "cross_attn.q_linear", "cross_attn.o": "cross_attn.proj",
    "cross_attn.norm_q": "cross_attn.q_norm", "cross_attn.norm_k": "cross_attn.k_norm",
    "ffn.w1": "ffn.w1", "ffn.w2": "ffn.w2", "ffn.w3": "ffn.w3",
}
# Fused official Linears (inside ``blocks.N``) and their Kijai parts, in row order.
FUSED = {"attn.qkv": ("self_attn.q", "self_attn.k", "self_attn.v"),
         "cross_attn.kv_linear": ("cross_attn.k", "cross_attn.v")}
_PART_OF = {part: (fused, i, len(parts)) for fused, parts in FUSED.items() for i, part in enumerate(parts)}
_TOP_LEVEL_INV = {v: k for k, v in TOP_LEVEL.items()}
_PER_BLOCK_INV = {v: k for k, v in PER_BLOCK.items()}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")

_PARAMS = ("weight", "bias", "scale_weight")  # parameters the mapping renames
# Keys (after a wrapper prefix) that only this layout has together: Wan 2.x files have
# ``ffn.0`` and a bare ``modulation`` parameter instead.
SIGNATURE = ("blocks.0.self_attn.q.weight", "blocks.0.ffn.w1.weight", "blocks.0.modulation.1.weight")


class Target(NamedTuple):
    """Where a Kijai module lands: the official module, and for a q/k/v (k/v) part its row block."""

    module: str
    part: int = 0
    parts: int = 1


def is_kijai_layout(keys) -> bool:
    """True when the (prefix-stripped) keys are a LongCat DiT in Kijai's layout.

    Raises ValueError for a file with LongCat's Wan-style names (``self_attn.q`` with ``ffn.w1``)
    that lacks the rest of the signature, rather than calling it a Wan 2.x model.
    """
    missing = [key for key in SIGNATURE if key not in keys]
    if missing and SIGNATURE[0] in keys and SIGNATURE[1] in keys:
        raise ValueError(f"Kijai-layout LongCat checkpoint without {', '.join(missing)}")
    return not missing


def official_module(kijai_module: str) -> Target | None:
    """Official target of a Kijai module path (``blocks.3.self_attn.k`` → ``blocks.3.attn.qkv``, part 1 of 3).

    None for a name that is not one of Kijai's LongCat modules.
    """
    if kijai_module in TOP_LEVEL:
        return Target(TOP_LEVEL[kijai_module])
    match = _BLOCK.fullmatch(kijai_module)
    if match is None:
        return None
    block, rest = match.groups()
    if rest in PER_BLOCK:
        return Target(f"blocks.{block}.{PER_BLOCK[rest]}")
    if rest in _PART_OF:
        fused, part, parts = _PART_OF[rest]
        return Target(f"blocks.{block}.{fused}", part, parts)
    return None


def kijai_modules(official: str) -> list[tuple[str, int, int]]:
    """Kijai module paths of an official module: ``[(path, part, parts)]`` (three for a qkv)."""
    if official in _TOP_LEVEL_INV:
        return [(_TOP_LEVEL_INV[official], 0, 1)]
    match = _BLOCK.fullmatch(official)
    if match is None:
        return []
    block, rest = match.groups()
    if rest in _PER_BLOCK_INV:
        return [(f"blocks.{block}.{_PER_BLOCK_INV[rest]}", 0, 1)]
    parts = FUSED.get(rest, ())
    return [(f"blocks.{block}.{part}", i, len(parts)) for i, part in enumerate(parts)]


def lora_key_map(weight_shapes: Mapping[str, tuple], prefix: str = "diffusion_model.") -> dict:
    """ComfyUI LoRA key-map entries for Kijai's module names on a model with official keys.

    ``prefix + kijai module`` → ``prefix + official weight key``, or for a q/k/v (k/v) part
    ``(key, (0, first row, rows))``: ComfyUI then adds that part's delta to those rows only.
    weight_shapes: ``{official state-dict key: shape}`` (non-weight keys are ignored).
    """
    key_map = {}
    for key, shape in weight_shapes.items():
        if not key.endswith(".weight"):
            continue
        for module, part, parts in kijai_modules(key[:-len(".weight")]):
            target = prefix + key
            if parts > 1:
                rows = shape[0] // parts
                target = (target, (0, part * rows, rows))
            key_map[prefix + module] = target
    return key_map


@dataclass(frozen=True)
class JoinedTensor:
    """One official tensor stored as several (Kijai's q, k, v → qkv): ``parts`` joined along dim 0.

    rows: rows each part gives. vector: the parts are scales, read flat (``[]``, ``[rows]`` or
    ``[rows, 1]``); one holding one value (a per-tensor scale) is repeated over its rows, so
    per-tensor scales become the per-row scale of the fused weight. Parts are header entries
    (``weights.TensorInfo``); nothing is read until ``read``.
    """

    parts: tuple
    rows: tuple[int, ...]
    vector: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    @property
    def shape(self) -> tuple[int, ...]:
        if self.vector:
            return (sum(self.rows),)
        return (sum(self.rows), *self.parts[0].shape[1:])

    @property
    def file(self):
        return self.parts[0].file

    def read(self, get) -> torch.Tensor:
        """The joined tensor; ``get(part)`` reads one stored tensor."""
        pieces = []
        for part, rows in zip(self.parts, self.rows):
            tensor = get(part)
            if self.vector:
                tensor = tensor.reshape(-1)
            if tensor.dim() == 0 or tensor.shape[0] != rows:
                tensor = tensor.reshape(1).expand(rows)
            pieces.append(tensor)
        return torch.cat(pieces)


def to_official(infos: dict) -> dict:
    """Kijai-layout header entries (prefix stripped) → ``{official key: entry or JoinedTensor}``.

    Unknown names (and parameters other than weight, bias, scale_weight) pass through unchanged,
    so the key check names them as the file does. Raises
    ValueError naming the Kijai keys when a fused tensor lacks a part or its parts differ in dtype.
    """
    out, fused = {}, {}
    for key, info in infos.items():
        module, _, param = key.rpartition(".")
        target = official_module(module) if param in _PARAMS else None
        if target is None:
            out[key] = info
        elif target.parts == 1:
            out[f"{target.module}.{param}"] = info
        else:
            fused.setdefault(f"{target.module}.{param}", [None] * target.parts)[target.part] = info
    for key, parts in fused.items():
        module, _, param = key.rpartition(".")
        names = [f"{path}.{param}" for path, _, _ in kijai_modules(module)]
        if missing := [name for name, part in zip(names, parts) if part is None]:
            raise ValueError(f"Kijai-layout LongCat checkpoint: {key} needs {', '.join(names)}; "
                             f"missing {', '.join(missing)}")
        if len({part.dtype for part in parts}) > 1:
            raise ValueError(f"Kijai-layout LongCat checkpoint: {', '.join(names)} differ in dtype "
                             f"({', '.join(str(part.dtype) for part in parts)})")
        rows = tuple(part.shape[0] if len(part.shape) else 1 for part in parts)
        out[key] = JoinedTensor(tuple(parts), rows)
    return out
