"""Loading Avatar checkpoints: official folders (sharded, config.json), the INT8 copy, single
files, and clear errors for the wrong model family or LoRA. Every file is built by the test."""

import json

import pytest
import torch
from longcat_pack.longcat import lora, weights
from longcat_pack.longcat.avatar.weights import (
    inspect_avatar_checkpoint,
    load_avatar_dit,
)
from safetensors.torch import save_file
from tiny_avatar import avatar_inputs, tiny_avatar
from tiny_dit import tiny_dit


def _write_sharded(folder, state, config, index_name="diffusion_pytorch_model.safetensors.index.json",
                   shard="diffusion_pytorch_model-{:05d}-of-00002.safetensors"):
    folder.mkdir()
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        name = shard.format(i)
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / index_name).write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))


def _run(model):
    x, ctx, mask, audio = avatar_inputs(1, 1, 6)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), ctx, mask, num_cond_latents=1, audio=audio)


def test_official_sharded_folder_loads_with_its_config(tmp_path):
    model = tiny_avatar(seed=1, audio_prenorm=False)
    config = {"_class_name": "LongCatVideoAvatarTransformer3DModel", "audio_block": 3, "audio_channel": 8,
              "audio_prenorm": False, "text_tokens_zero_pad": True, "class_range": 24, "class_interval": 4}
    _write_sharded(tmp_path / "base_model", model.state_dict(), config)
    infos, cfg = inspect_avatar_checkpoint(tmp_path / "base_model")
    assert (cfg["audio_block"], cfg["audio_channel"], cfg["audio_prenorm"], cfg["depth"]) == (3, 8, False, 2)
    assert len(infos) == len(model.state_dict())
    loaded = load_avatar_dit(tmp_path / "base_model", dtype=torch.float32)
    torch.testing.assert_close(_run(loaded), _run(model), atol=0, rtol=0)


def test_int8_copy_dequantizes_like_the_official_layer(tmp_path):
    """base_model_int8/: every Linear but final_layer.linear as int8 [out, in] + fp32 per-row
    scale max|w|/127; the official layer computes int8.to(dtype) · scale.to(dtype)."""
    model = tiny_avatar(seed=2)
    state, expected = {}, {}
    for key, value in model.state_dict().items():
        module = key[: -len(".weight")]
        linear = value.ndim == 2 and key != "final_layer.linear.weight"
        if linear:
            scale = value.abs().amax(1).clamp(min=1e-8) / 127
            q = (value / scale[:, None]).round().clamp(-128, 127).to(torch.int8)
            state[module + ".weight_int8"], state[module + ".weight_scale"] = q, scale
            expected[key] = q.to(torch.bfloat16) * scale.to(torch.bfloat16)[:, None]
        else:
            state[key] = value.to(torch.bfloat16) if key.endswith(".bias") else value
            expected[key] = state[key].to(torch.bfloat16)
    _write_sharded(tmp_path / "base_model_int8", state, {"audio_block": 3, "audio_channel": 8},
                   index_name="quantized_model.safetensors.index.json",
                   shard="quantized_model-{:05d}-of-00002.safetensors")
    loaded = load_avatar_dit(tmp_path / "base_model_int8", dtype=torch.bfloat16)
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_single_file_of_a_known_version_needs_no_config(tmp_path):
    model = tiny_avatar(seed=3, audio_block=5, audio_channel=1280, intermediate_dim=8)  # the 1.5 feature shape
    save_file(model.state_dict(), str(tmp_path / "avatar15.safetensors"))
    _, cfg = inspect_avatar_checkpoint(tmp_path / "avatar15.safetensors")
    assert (cfg["audio_block"], cfg["audio_channel"], cfg["audio_prenorm"]) == (5, 1280, True)


def test_wrong_family_gets_a_clear_message(tmp_path):
    save_file(tiny_avatar().state_dict(), str(tmp_path / "avatar.safetensors"))
    with pytest.raises(ValueError, match="neither Avatar 1.0 .12x768. nor 1.5"):
        inspect_avatar_checkpoint(tmp_path / "avatar.safetensors")
    with pytest.raises(ValueError, match="is a LongCat-Video-Avatar checkpoint.*Avatar Model"):
        weights.inspect_checkpoint(tmp_path / "avatar.safetensors")
    save_file(tiny_dit().state_dict(), str(tmp_path / "base.safetensors"))
    with pytest.raises(ValueError, match="not a LongCat-Video-Avatar checkpoint.*Load LongCat-Video Model"):
        inspect_avatar_checkpoint(tmp_path / "base.safetensors")
    broken = tiny_avatar(audio_block=5, audio_channel=1280, intermediate_dim=8).state_dict()
    del broken["blocks.1.audio_cross_attn.proj.weight"]
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match="missing 1: blocks.1.audio_cross_attn.proj.weight"):
        inspect_avatar_checkpoint(tmp_path / "broken.safetensors")


def test_kijai_avatar_file_is_refused_clearly(tmp_path):
    """Kijai's Avatar files keep the projector as multitalk_audio_proj.*; the rest of their map is unknown."""
    state = {("multitalk_audio_proj." + k[len("audio_proj."):] if k.startswith("audio_proj.") else k): v
             for k, v in tiny_avatar().state_dict().items()}
    save_file(state, str(tmp_path / "LongCat-Avatar_comfy_bf16.safetensors"))
    with pytest.raises(ValueError, match="Kijai's Avatar layout is not supported"):
        inspect_avatar_checkpoint(tmp_path / "LongCat-Avatar_comfy_bf16.safetensors")


def test_avatar_lora_on_the_base_model_is_refused_clearly():
    """An official-format LoRA (the DMD LoRA's format) that targets audio layers."""
    sep = lora.OFFICIAL_SEP
    name = lora.OFFICIAL_PREFIX + sep.join(["blocks", "0", "audio_cross_attn", "q_linear"])
    lora_sd = {name + ".lora_down.weight": torch.randn(4, 64), name + ".lora_up.weight": torch.randn(64, 4),
               name + ".alpha_scale": torch.tensor(0.5)}
    avatar_shapes = {k: tuple(v.shape) for k, v in tiny_avatar().state_dict().items()}
    deltas = lora.parse_lora(lora_sd, avatar_shapes)
    assert list(deltas) == ["blocks.0.audio_cross_attn.q_linear.weight"]
    base_shapes = {k: tuple(v.shape) for k, v in tiny_dit().state_dict().items()}
    with pytest.raises(ValueError, match="this LoRA is for LongCat-Video-Avatar"):
        lora.parse_lora(lora_sd, base_shapes)
