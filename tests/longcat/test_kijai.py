"""Kijai's ComfyUI files (Wan-style names; bf16, scaled fp8, LoRAs) load as the official model.

Every file is built here from one tiny official state dict through ``kijai_layout`` (its own
key mapping, not the loader's) and compared with the official-layout file or a merge by hand.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kijai_layout import (
    kijai_lora,
    merge_by_hand,
    to_kijai,
    to_kijai_scaled_fp8,
)
from longcat_pack.longcat import kijai, weights
from longcat_pack.longcat.convert import convert
from longcat_pack.longcat.lora import load_lora_file, merge_lora, parse_lora
from safetensors.torch import load_file, save_file
from tiny_dit import TINY, random_state

REPO = Path(__file__).resolve().parents[2]
C = TINY["hidden_size"]
PREFIXES = ["", "model.diffusion_model.", "diffusion_model.", "model."]


def _inputs(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, TINY["in_channels"], 2, 4, 4, generator=gen).to(dtype)
    context = torch.randn(1, 5, TINY["caption_channels"], generator=gen)
    return x, torch.tensor([700.0]), context


def _run(model, dtype=torch.float32):
    with torch.no_grad():
        return model(*_inputs(dtype))


def _save(state, path, prefix=""):
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def official():
    return random_state(3)


def test_layout_has_the_documented_tensor_count(official):
    blocks = TINY["depth"]
    assert len(official) == 21 * blocks + 14 and len(to_kijai(official)) == 27 * blocks + 14


@pytest.mark.parametrize("prefix", PREFIXES)
def test_bf16_file_gives_the_official_model(official, tmp_path, prefix):
    """Same tensors, same model, same output, whatever wrapper prefix the file carries."""
    bf16 = {k: v.bfloat16() for k, v in official.items()}
    ours = _save(bf16, tmp_path / "official.safetensors")
    kijai = _save(to_kijai(bf16), tmp_path / "LongCat_TI2V_comfy_bf16.safetensors", prefix)
    want, got = weights.load_state_dict(ours), weights.load_state_dict(kijai)
    assert got.keys() == want.keys()
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(_run(weights.load_dit(kijai)), _run(weights.load_dit(ours)), rtol=0, atol=0)


def test_detection_is_by_keys_not_file_name(official, tmp_path):
    kijai = _save(to_kijai(official), tmp_path / "longcat_official_layout.safetensors")
    assert "blocks.0.attn.qkv.weight" in weights.load_state_dict(kijai)
    plain = _save(official, tmp_path / "LongCat_TI2V_comfy_bf16.safetensors")
    assert "blocks.0.attn.qkv.weight" in weights.load_state_dict(plain)


@pytest.mark.parametrize("scale_shape, scale_name", [((), "scale_weight"), ((1,), "scale_weight"),
                                                     ((), "weight_scale")])
def test_scaled_fp8_stays_fp8_and_computes_fp8_times_scale(official, tmp_path, scale_shape, scale_name):
    kijai_sd, dequantized = to_kijai_scaled_fp8(official, scale_shape, scale_name)
    path = _save(kijai_sd, tmp_path / "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ.safetensors")
    model = weights.load_dit(path)
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.scale_weight.shape == (3 * C,)
    assert model.blocks[1].cross_attn.kv_linear.scale_weight.shape == (2 * C,)
    assert model.blocks[0].adaLN_modulation[1].weight.dtype == torch.float32  # left unquantized
    # Each row block of the fused weight carries its own part's scale.
    q_scale, k_scale, v_scale = (kijai_sd[f"blocks.0.self_attn.{p}.{scale_name}"].item() for p in "qkv")
    torch.testing.assert_close(qkv.scale_weight, torch.tensor([q_scale] * C + [k_scale] * C + [v_scale] * C))
    assert len({q_scale, k_scale, v_scale}) == 3  # otherwise this test could not tell them apart
    # fp32 compute: the dequantized official model, to fp32 rounding.
    reference = _save(dequantized, tmp_path / "dequantized.safetensors")
    torch.testing.assert_close(_run(model), _run(weights.load_dit(reference)), rtol=1e-5, atol=1e-5)
    # bf16 compute stays within fp8 rounding of the unquantized model.
    full, fp8 = _run(weights.load_dit(_save(official, tmp_path / "full.safetensors")), torch.bfloat16), \
        _run(model, torch.bfloat16)
    assert ((fp8 - full).norm() / full.norm()).item() < 0.05


def test_scaled_fp8_loaded_in_bf16_is_dequantized(official, tmp_path):
    kijai_sd, dequantized = to_kijai_scaled_fp8(official)
    path = _save(kijai_sd, tmp_path / "fp8.safetensors")
    state = weights.load_state_dict(path, dtype=torch.bfloat16)
    assert not any(k.endswith("scale_weight") for k in state)
    assert all(torch.equal(state[k], dequantized[k].bfloat16()) for k in dequantized)


def test_scaled_fp8_with_fp8_dtype_keeps_weights_and_scales_rest_bf16(official, tmp_path):
    kijai_sd, _ = to_kijai_scaled_fp8(official)
    path = _save(kijai_sd, tmp_path / "fp8.safetensors")
    kept = weights.load_state_dict(path)
    state = weights.load_state_dict(path, dtype=torch.float8_e4m3fn)
    assert torch.equal(state["blocks.0.attn.qkv.weight"].view(torch.uint8),
                       kept["blocks.0.attn.qkv.weight"].view(torch.uint8))
    assert torch.equal(state["blocks.0.attn.qkv.scale_weight"], kept["blocks.0.attn.qkv.scale_weight"])
    # Linears the file left unquantized are not quantized here either (no scale to keep).
    assert state["blocks.0.adaLN_modulation.1.weight"].dtype == torch.bfloat16
    assert state["final_layer.linear.weight"].dtype == torch.bfloat16


def test_scaled_fp8_needs_operations_that_apply_the_scale(official, tmp_path):
    path = _save(to_kijai_scaled_fp8(official)[0], tmp_path / "fp8.safetensors")
    with pytest.raises(ValueError, match="does not apply scale_weight"):
        weights.load_dit(path, operations=torch.nn)
    weights.load_dit(path, dtype=torch.bfloat16, operations=torch.nn)  # dequantized: plain layers do


def test_errors_name_keys(official, tmp_path):
    kijai = to_kijai(official)
    kijai.pop("blocks.1.self_attn.v.weight")
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.qkv\.weight.*missing blocks\.1\.self_attn\.v\.weight"):
        weights.load_state_dict(_save(kijai, tmp_path / "partial.safetensors"))
    # A Wan 2.x DiT (ffn.0, bare modulation) is neither layout: today's message.
    wan = {"patch_embedding.weight": torch.zeros(2, 2), "blocks.0.self_attn.q.weight": torch.zeros(2, 2),
           "blocks.0.ffn.0.weight": torch.zeros(2, 2), "blocks.0.modulation": torch.zeros(1, 6, 2)}
    with pytest.raises(ValueError, match="not a LongCat-Video DiT.*looks like Wan 2.x"):
        weights.load_state_dict(_save(wan, tmp_path / "wan.safetensors"))
    with pytest.raises(ValueError, match="not a LongCat-Video DiT.*first keys: a.weight, b.weight"):
        weights.load_state_dict(_save({"a.weight": torch.zeros(1), "b.weight": torch.zeros(1)},
                                      tmp_path / "other.safetensors"))
    broken = {k: v for k, v in to_kijai(official).items() if k != "blocks.0.modulation.1.weight"}
    with pytest.raises(ValueError, match=r"Kijai-layout LongCat checkpoint without blocks\.0\.modulation\.1\.weight"):
        weights.load_state_dict(_save(broken, tmp_path / "broken.safetensors"))
    stray = {**to_kijai(official), "blocks.0.self_attn.q.extra": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected 1: blocks\.0\.self_attn\.q\.extra"):
        weights.load_state_dict(_save(stray, tmp_path / "stray.safetensors"))


# ------------------------------------------------------------------------------- converter

def test_converter_writes_either_layout_into_ours(official, tmp_path):
    bf16 = {k: v.bfloat16() for k, v in official.items()}
    out = convert(_save(to_kijai(bf16), tmp_path / "kj_bf16.safetensors"), tmp_path / "ours_bf16.safetensors")
    loaded = load_file(str(out))
    assert loaded.keys() == official.keys() and all(torch.equal(loaded[k], bf16[k]) for k in bf16)

    kijai_sd, dequantized = to_kijai_scaled_fp8(official)
    fp8_path = _save(kijai_sd, tmp_path / "kj_fp8.safetensors")
    # fp8 output: the fp8 values and per-row scales copied as they are; loads as the Kijai file does.
    ours_fp8 = convert(fp8_path, tmp_path / "ours_fp8.safetensors", torch.float8_e4m3fn)
    direct, converted = weights.load_state_dict(fp8_path), load_file(str(ours_fp8))
    assert direct.keys() == converted.keys()
    assert converted["blocks.0.attn.qkv.scale_weight"].shape == (3 * C,)
    assert all(torch.equal(converted[k].view(torch.uint8), direct[k].view(torch.uint8)) for k in direct
               if k.endswith(".weight") and direct[k].dtype == torch.float8_e4m3fn)
    # The rest is bf16 in the converted file, as when the Kijai file is loaded with an fp8 dtype.
    torch.testing.assert_close(_run(weights.load_dit(ours_fp8)),
                               _run(weights.load_dit(fp8_path, dtype=torch.float8_e4m3fn)), rtol=0, atol=0)
    # bf16 output: dequantized.
    ours = load_file(str(convert(fp8_path, tmp_path / "ours_deq.safetensors", torch.bfloat16)))
    assert all(torch.equal(ours[k], dequantized[k].bfloat16()) for k in dequantized)


def test_converter_help_states_defaults():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_longcat.py"), "--help"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert "default: bf16" in done.stdout and "Kijai" in done.stdout


# ------------------------------------------------------------------------------- LoRA

SHAPES = {k: tuple(v.shape) for k, v in random_state(3).items() if v.ndim == 2}
ALL_TARGETS = [f"blocks.{b}.{m}" for b in range(TINY["depth"]) for m in (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
    "cross_attn.v", "cross_attn.o", "ffn.w1", "ffn.w2", "ffn.w3", "modulation.1")] + [
    "head.head", "head.modulation.1", "text_embedding.0", "time_embedding.mlp.2"]


def _assert_state_close(got, want, keys, **tol):
    for key in keys:
        torch.testing.assert_close(got[key].float(), want[key], **tol, msg=key)


@pytest.mark.parametrize("targets, alphas", [
    (ALL_TARGETS, None),
    # k left out, q and v with different alpha: v's rows and k's rows land right, k's stay put.
    (["blocks.0.self_attn.q", "blocks.0.self_attn.v", "blocks.1.cross_attn.v"],
     {"blocks.0.self_attn.q": 1.0, "blocks.0.self_attn.v": 8.0}),
])
def test_kijai_lora_merges_into_the_right_rows(official, tmp_path, targets, alphas):
    lora_sd, raw = kijai_lora(SHAPES, targets, rank=4, alphas=alphas, seed=1)
    path = tmp_path / "LongCat_distill_lora_alpha64_bf16.safetensors"
    save_file(lora_sd, str(path))
    deltas = load_lora_file(path, {k: tuple(v.shape) for k, v in official.items()})
    merged = merge_lora(official, deltas, strength=0.8)
    want = merge_by_hand(official, raw, 0.8)
    _assert_state_close(merged, want, official, rtol=1e-5, atol=1e-5)
    if "blocks.0.self_attn.k" not in targets:
        assert torch.equal(merged["blocks.0.attn.qkv.weight"][C:2 * C], official["blocks.0.attn.qkv.weight"][C:2 * C])


def test_kijai_lora_targets_official_weights():
    """Every Kijai module lands on an official weight; q/k/v parts join into one block-diagonal delta."""
    lora_sd, _ = kijai_lora(SHAPES, ALL_TARGETS, seed=2)
    deltas = parse_lora(lora_sd, SHAPES)
    qkv = deltas["blocks.0.attn.qkv.weight"]
    assert qkv.up.shape == (3 * C, 12) and qkv.down.shape == (12, C)
    assert set(deltas) == {k for k in SHAPES if not k.startswith(("x_embedder", "t_embedder.mlp.0",
                                                                   "y_embedder.y_proj.2"))}


def test_kijai_lora_merged_into_scaled_fp8_state(official, tmp_path):
    kijai_sd, dequantized = to_kijai_scaled_fp8(official)
    state = weights.load_state_dict(_save(kijai_sd, tmp_path / "fp8.safetensors"))
    lora_sd, raw = kijai_lora(SHAPES, ["blocks.0.self_attn.k", "blocks.1.ffn.w2"], seed=3)
    merged = merge_lora(state, parse_lora(lora_sd, SHAPES), strength=1.0)
    assert merged["blocks.0.attn.qkv.weight"].dtype == torch.float8_e4m3fn and torch.equal(
        merged["blocks.0.attn.qkv.scale_weight"], state["blocks.0.attn.qkv.scale_weight"])
    want = merge_by_hand(dequantized, raw, 1.0)
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.ffn.w2.weight"):
        scale = state[key.replace(".weight", ".scale_weight")][:, None]
        got = merged[key].float() * scale
        assert not torch.equal(got, dequantized[key])
        # Re-quantized with the same scales: within fp8 rounding (3 mantissa bits, 2^-4 relative),
        # and saturated at the row's fp8 range (448 · scale) where the LoRA goes past it.
        limit = 448 * scale.expand_as(got)
        inside = want[key].abs() <= limit
        assert ((got - want[key]).abs() <= want[key].abs() / 16 + 1e-6)[inside].all()
        torch.testing.assert_close(got[~inside], (want[key].sign() * limit)[~inside])


def test_kijai_lora_part_given_twice_is_an_error():
    lora_sd, _ = kijai_lora(SHAPES, ["blocks.0.self_attn.q"], seed=4)
    twice = {**lora_sd, **{k.replace("diffusion_model.", ""): v for k, v in lora_sd.items()}}
    with pytest.raises(ValueError, match="twice"):
        parse_lora(twice, SHAPES)


def test_comfy_key_map_slices_put_kijai_parts_on_their_rows(official):
    """The key map given to ComfyUI's LoRA loaders, applied as ComfyUI does (a ``(dim, offset,
    size)`` target narrows the weight), equals the merge by hand."""
    _, raw = kijai_lora(SHAPES, ALL_TARGETS, seed=5)
    key_map = kijai.lora_key_map(SHAPES, prefix="diffusion_model.")
    merged = {k: v.clone() for k, v in official.items()}
    for module, (up, down, scale) in raw.items():
        target = key_map[f"diffusion_model.{module}"]
        key, (dim, offset, size) = target if isinstance(target, tuple) else (target, (0, 0, None))
        weight = merged[key[len("diffusion_model."):]]
        rows = weight.narrow(dim, offset, size or weight.shape[dim])
        rows += scale * up @ down
    _assert_state_close(merged, merge_by_hand(official, raw, 1.0), official, rtol=1e-5, atol=1e-6)
