"""Tiny files in Kijai's ComfyUI layout, built from an official state dict for the tests.

The key mapping here is written independently of ``longcat/kijai.py`` (renames listed as
substring swaps, q/k/v and k/v split with ``chunk``), so a mistake in the loader's table cannot
cancel out in a test. Layout (reference: Kijai/LongCat-Video_comfy as read by public loaders):
Wan-style names; self-attention q/k/v and cross-attention k/v as separate Linears; the scaled
fp8 file has float8_e4m3fn block Linears with one ``scale_weight`` each, a ``scaled_fp8``
marker, and everything else in fp32. LoRAs: ``diffusion_model.<Kijai module>.lora_up/down.weight``
and ``.alpha`` (scale alpha / rank).
"""

import torch

# Official prefix → Kijai prefix, at the start of a key.
TOP_LEVEL = [("x_embedder.proj.", "patch_embedding."), ("t_embedder.mlp.", "time_embedding.mlp."),
             ("y_embedder.y_proj.", "text_embedding."), ("final_layer.linear.", "head.head."),
             ("final_layer.adaLN_modulation.1.", "head.modulation.1.")]
# Official → Kijai, inside a block key (".name." so that "attn." does not match "cross_attn.").
IN_BLOCK = [(".adaLN_modulation.1.", ".modulation.1."), (".attn.proj.", ".self_attn.o."),
            (".attn.q_norm.", ".self_attn.norm_q."), (".attn.k_norm.", ".self_attn.norm_k."),
            (".pre_crs_attn_norm.", ".norm3."), (".cross_attn.q_linear.", ".cross_attn.q."),
            (".cross_attn.proj.", ".cross_attn.o."), (".cross_attn.q_norm.", ".cross_attn.norm_q."),
            (".cross_attn.k_norm.", ".cross_attn.norm_k.")]
# Fused official Linear → its Kijai parts in row order.
SPLIT = {".attn.qkv.": (".self_attn.q.", ".self_attn.k.", ".self_attn.v."),
         ".cross_attn.kv_linear.": (".cross_attn.k.", ".cross_attn.v.")}
# The official Linears inside a block that Kijai's fp8 file quantizes (the 11 Kijai Linears).
FP8_LINEARS = (".attn.qkv.", ".attn.proj.", ".cross_attn.q_linear.", ".cross_attn.kv_linear.",
               ".cross_attn.proj.", ".ffn.w1.", ".ffn.w2.", ".ffn.w3.")
FP8_MAX = 448.0


def kijai_name(official_key: str) -> str:
    """Kijai name of an official key that is not split."""
    for old, new in TOP_LEVEL:
        if official_key.startswith(old):
            return new + official_key[len(old):]
    for old, new in IN_BLOCK:
        if old in official_key:
            return official_key.replace(old, new)
    return official_key  # ffn.w1/w2/w3 keep their names


def split_parts(official_key: str, value: torch.Tensor) -> dict:
    """``{Kijai key: tensor}`` for one official tensor (several for qkv / kv_linear)."""
    for fused, parts in SPLIT.items():
        if fused in official_key:
            return {official_key.replace(fused, part): piece.clone()
                    for part, piece in zip(parts, value.chunk(len(parts)))}
    return {kijai_name(official_key): value}


def to_kijai(official: dict) -> dict:
    """Kijai-layout state dict with the same values (27 tensors per block + 14)."""
    out = {}
    for key, value in official.items():
        out.update(split_parts(key, value))
    return out


def is_fp8_linear(official_key: str) -> bool:
    """True for the official weights Kijai's fp8 file stores in fp8 (as parts for qkv / kv)."""
    return official_key.startswith("blocks.") and official_key.endswith(".weight") and any(
        name in official_key for name in FP8_LINEARS)


def quantize_part(weight: torch.Tensor):
    """Per-tensor scaled fp8 as in the file: (fp8 values, fp32 scale), weight ≈ fp8 · scale."""
    scale = weight.float().abs().max().clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).to(torch.float8_e4m3fn), scale


def to_kijai_scaled_fp8(official: dict, scale_shape=(), scale_name="scale_weight"):
    """(Kijai scaled-fp8 state dict, the official state dict it dequantizes to, fp32).

    Each Kijai block Linear (a q / k / v part of a fused weight quantized on its own) is fp8
    with one scale; the rest is fp32. scale_shape: () or (1,), both seen in fp8 files.
    """
    kijai_sd = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    dequantized = {}
    for key, value in official.items():
        parts = split_parts(key, value)
        if not is_fp8_linear(key):
            kijai_sd.update({k: v.float() for k, v in parts.items()})
            dequantized[key] = value.float()
            continue
        pieces = []
        for name, part in parts.items():
            fp8, scale = quantize_part(part)
            kijai_sd[name] = fp8
            kijai_sd[name[:-len("weight")] + scale_name] = scale.reshape(scale_shape)
            pieces.append(fp8.float() * scale)
        dequantized[key] = torch.cat(pieces)
    return kijai_sd, dequantized


# ------------------------------------------------------------------------------- LoRA

def kijai_lora(official_shapes: dict, targets, rank=4, alphas=None, seed=0):
    """Kijai/ComfyUI-layout LoRA on ``targets`` (Kijai module names, e.g. ``blocks.0.self_attn.k``).

    official_shapes: ``{official weight key: (out, in)}``. alphas: ``{module: alpha}`` (default
    rank / 2). Returns (state dict, ``{module: (up, down, alpha / rank)}``).
    """
    gen = torch.Generator().manual_seed(seed)
    sd, raw = {}, {}
    for module in targets:
        out_f, in_f = _kijai_shape(module, official_shapes)
        down = torch.randn(rank, in_f, generator=gen) / in_f ** 0.5
        up = torch.randn(out_f, rank, generator=gen) / rank
        alpha = (alphas or {}).get(module, rank / 2)
        base = f"diffusion_model.{module}"
        sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = down, up
        sd[f"{base}.alpha"] = torch.tensor(float(alpha))
        raw[module] = (up, down, alpha / rank)
    return sd, raw


def _official_rows(module: str, official_shapes: dict):
    """(official weight key, first row, rows) that a Kijai module's weight occupies."""
    key = module + ".weight"
    for fused, parts in SPLIT.items():
        for i, part in enumerate(parts):
            if part in key:
                official = key.replace(part, fused)
                rows = official_shapes[official][0] // len(parts)
                return official, i * rows, rows
    inverse = {kijai_name(k): k for k in official_shapes}
    official = inverse[key]
    return official, 0, official_shapes[official][0]


def _kijai_shape(module: str, official_shapes: dict):
    official, _, rows = _official_rows(module, official_shapes)
    return rows, official_shapes[official][1]


def merge_by_hand(official: dict, raw: dict, strength: float) -> dict:
    """``W + strength · alpha/rank · up @ down`` added to each Kijai module's rows, in fp32."""
    shapes = {k: tuple(v.shape) for k, v in official.items() if v.ndim == 2}
    merged = {k: v.float().clone() for k, v in official.items()}
    for module, (up, down, scale) in raw.items():
        key, first, rows = _official_rows(module, shapes)
        merged[key][first:first + rows] += strength * scale * (up.float() @ down.float())
    return merged
