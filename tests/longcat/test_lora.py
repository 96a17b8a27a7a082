"""LoRA parsing (official + community formats), merge formula, stacking, ComfyUI export."""

import pytest
import torch
from longcat_pack.longcat.lora import (
    LoraDelta,
    merge_lora,
    parse_lora,
    to_comfy_lora_state_dict,
)

C, FFN = 64, 192  # tiny hidden size and SwiGLU width; head layout does not matter for LoRA
# LoRA shapes (docs/pipelines.md, LoRA) on a tiny config (block 0 only, plus one block-1 weight).
MODEL_SHAPES = {
    "blocks.0.attn.qkv.weight": (3 * C, C),
    "blocks.0.attn.proj.weight": (C, C),
    "blocks.0.cross_attn.q_linear.weight": (C, C),
    "blocks.0.cross_attn.kv_linear.weight": (2 * C, C),
    "blocks.0.ffn.w1.weight": (FFN, C),
    "blocks.0.adaLN_modulation.1.weight": (6 * C, 32),
    "blocks.1.ffn.w2.weight": (C, FFN),
}
# Fused targets get split up-projections in the official format.
SPLITS = {"blocks.0.attn.qkv": 3, "blocks.0.cross_attn.kv_linear": 2}


def _official_name(path):
    return "lora___lorahyphen___" + path.replace(".", "___lorahyphen___")


def _official_lora(seed, rank=4, alpha_scale=0.5, targets=None):
    """Build an official-format LoRA state dict; returns (file dict, {path: (ups, down)})."""
    gen = torch.Generator().manual_seed(seed)
    sd, raw = {}, {}
    for key in targets or MODEL_SHAPES:
        path = key[: -len(".weight")]
        out_f, in_f = MODEL_SHAPES[key]
        n = SPLITS.get(path, 1)
        name = _official_name(path)
        down = torch.randn(n * rank, in_f, generator=gen)
        ups = [torch.randn(out_f // n, rank, generator=gen) for _ in range(n)]
        sd[f"{name}.lora_down.weight"] = down
        if n == 1:
            sd[f"{name}.lora_up.weight"] = ups[0]
        else:
            for i, up in enumerate(ups):
                sd[f"{name}.lora_up.blocks.{i}.weight"] = up
        sd[f"{name}.alpha_scale"] = torch.tensor(alpha_scale)
        raw[key] = (ups, down)
    return sd, raw


def _model_sd(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=gen) for k, s in MODEL_SHAPES.items()}


def _runtime_forward(weight, x, loras):
    """Official unmerged runtime: y = W x + Σ m·alpha_scale·up(down(x)), down(x) chunked for n > 1."""
    y = x @ weight.T
    for ups, down, alpha_scale, m in loras:
        h = x @ down.T
        pieces = h.chunk(len(ups), dim=-1)
        y = y + m * alpha_scale * torch.cat([p @ u.T for p, u in zip(pieces, ups)], dim=-1)
    return y


def test_official_parse_block_diagonal_and_scale():
    sd, raw = _official_lora(seed=1, rank=4, alpha_scale=0.25)
    deltas = parse_lora(sd, MODEL_SHAPES)
    assert set(deltas) == set(MODEL_SHAPES)
    qkv = deltas["blocks.0.attn.qkv.weight"]
    assert qkv.up.shape == (3 * C, 12) and qkv.down.shape == (12, C) and qkv.scale == 0.25
    ups, down = raw["blocks.0.attn.qkv.weight"]
    for i in range(3):  # row block i of ΔW is U_i @ D[i·r:(i+1)·r]
        expect = 0.25 * ups[i] @ down[4 * i: 4 * (i + 1)]
        torch.testing.assert_close(qkv.weight()[i * C:(i + 1) * C], expect)


def test_patch_equals_merge_official_runtime():
    sd, raw = _official_lora(seed=2, alpha_scale=0.5)
    deltas = parse_lora(sd, MODEL_SHAPES)
    weights = _model_sd()
    merged = merge_lora(weights, deltas, strength=0.7)
    x = torch.randn(5, 2, C, dtype=torch.float32)
    for key in ("blocks.0.attn.qkv.weight", "blocks.0.cross_attn.kv_linear.weight", "blocks.0.ffn.w1.weight"):
        ups, down = raw[key]
        y_runtime = _runtime_forward(weights[key], x, [(ups, down, 0.5, 0.7)])
        # fp32 products summed in a different order: a few ulps of |y| ~ 1e2.
        torch.testing.assert_close(x @ merged[key].T, y_runtime, rtol=1e-5, atol=1e-4)


def test_two_loras_stack():
    sd1, raw1 = _official_lora(seed=3, alpha_scale=0.5)
    sd2, raw2 = _official_lora(seed=4, rank=2, alpha_scale=2.0, targets=["blocks.0.attn.qkv.weight"])
    weights = _model_sd()
    merged = merge_lora(merge_lora(weights, parse_lora(sd1), 1.0), parse_lora(sd2), -0.3)
    key = "blocks.0.attn.qkv.weight"
    x = torch.randn(3, C)
    y_runtime = _runtime_forward(weights[key], x, [(*raw1[key], 0.5, 1.0), (*raw2[key], 2.0, -0.3)])
    torch.testing.assert_close(x @ merged[key].T, y_runtime, rtol=1e-5, atol=1e-4)
    # Targets of only the first LoRA are untouched by the second.
    other = "blocks.0.attn.proj.weight"
    torch.testing.assert_close(merge_lora(weights, parse_lora(sd1))[other], merged[other])


def _community(deltas, style):
    """Re-encode deltas in a community format (scale carried by alpha)."""
    out = {}
    for key, d in deltas.items():
        path = key[: -len(".weight")]
        alpha = torch.tensor(d.scale * d.rank)
        if style == "peft":
            out[f"diffusion_model.{path}.lora_A.weight"] = d.down
            out[f"diffusion_model.{path}.lora_B.weight"] = d.up
            out[f"diffusion_model.{path}.alpha"] = alpha
        elif style == "updown":
            out[f"{path}.lora_down.weight"] = d.down
            out[f"{path}.lora_up.weight"] = d.up
            out[f"{path}.alpha"] = alpha
        else:  # kohya
            name = "lora_unet_" + path.replace(".", "_")
            out[f"{name}.lora_down.weight"] = d.down
            out[f"{name}.lora_up.weight"] = d.up
            out[f"{name}.alpha"] = alpha
    return out


@pytest.mark.parametrize("style", ["peft", "updown", "kohya"])
def test_community_formats_roundtrip(style):
    deltas = parse_lora(_official_lora(seed=5, alpha_scale=0.5)[0])
    parsed = parse_lora(_community(deltas, style), MODEL_SHAPES)
    assert set(parsed) == set(deltas)
    for key, d in deltas.items():
        torch.testing.assert_close(parsed[key].weight(), d.weight())


def test_community_without_alpha_scale_one_and_transformer_prefix():
    down, up = torch.randn(4, C), torch.randn(C, 4)
    sd = {"transformer.blocks.0.attn.proj.lora_A.weight": down,
          "transformer.blocks.0.attn.proj.lora_B.weight": up}
    (key, d), = parse_lora(sd, MODEL_SHAPES).items()
    assert key == "blocks.0.attn.proj.weight" and d.scale == 1.0


def test_comfy_export_reproduces_scale():
    deltas = parse_lora(_official_lora(seed=6, alpha_scale=0.5)[0])
    comfy = to_comfy_lora_state_dict(deltas)
    base = "diffusion_model.blocks.0.attn.qkv"
    up, down, alpha = comfy[f"{base}.lora_up.weight"], comfy[f"{base}.lora_down.weight"], comfy[f"{base}.alpha"]
    # ComfyUI's formula: alpha / lora_down.shape[0] · up @ down.
    torch.testing.assert_close(alpha.item() / down.shape[0] * up @ down, deltas["blocks.0.attn.qkv.weight"].weight())
    assert set(parse_lora(comfy, MODEL_SHAPES)) == set(deltas)


def test_errors():
    sd, _ = _official_lora(seed=7, targets=["blocks.0.attn.proj.weight"])
    with pytest.raises(ValueError, match="no known LoRA format"):
        parse_lora({**sd, "something.else": torch.zeros(1)})
    no_alpha = {k: v for k, v in sd.items() if not k.endswith("alpha_scale")}
    with pytest.raises(ValueError, match="alpha_scale"):
        parse_lora(no_alpha)
    with pytest.raises(ValueError, match="does not match"):
        parse_lora(sd, {"blocks.0.attn.proj.weight": (C, 2 * C)})
    with pytest.raises(ValueError, match="not a weight of the model"):
        parse_lora(sd, {"blocks.0.ffn.w1.weight": (FFN, C)})
    with pytest.raises(ValueError, match="needs model_shapes"):
        parse_lora({"lora_unet_blocks_0_attn_proj.lora_down.weight": torch.zeros(2, C),
                    "lora_unet_blocks_0_attn_proj.lora_up.weight": torch.zeros(C, 2)})
    bad_rank = {**sd, _official_name("blocks.0.attn.proj") + ".lora_up.weight": torch.zeros(C, 3)}
    with pytest.raises(ValueError, match="do not form"):
        parse_lora(bad_rank)
    with pytest.raises(ValueError, match="missing"):
        parse_lora({k: v for k, v in sd.items() if "lora_up" not in k})
    with pytest.raises(ValueError, match="not in the state dict"):
        merge_lora({}, parse_lora(sd))


def test_delta_tuple_contract():
    d = LoraDelta(up=torch.ones(3, 2), down=torch.ones(2, 5), scale=0.5)
    assert d.rank == 2 and d.weight().shape == (3, 5) and float(d.weight()[0, 0]) == 1.0
    up, down, scale = d  # ARCHITECTURE.md: {weight_key: (up, down, scale)}
    assert up.shape == (3, 2) and down.shape == (2, 5) and scale == 0.5
