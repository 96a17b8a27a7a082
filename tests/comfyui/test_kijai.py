"""Kijai's files inside ComfyUI (in-process, CPU): the loader node, scaled fp8 kept fp8 with
ComfyUI's manual cast and lowvram patches, and Kijai LoRAs through LongCat LoRA and the stock
loader (needs ``COMFYUI_DIR`` and ComfyUI's Python packages)."""

import math
import sys
from pathlib import Path

import pytest
import torch
from longcat_pack.longcat import weights
from longcat_pack.longcat.dit import LongCatVideoDiT
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "longcat"))
from kijai_layout import (
    is_fp8_linear,
    kijai_lora,
    merge_by_hand,
    to_kijai,
    to_kijai_scaled_fp8,
)
from tiny_models import DIT_CONFIG

pytestmark = pytest.mark.comfyui
C = DIT_CONFIG["hidden_size"]
LORA_TARGETS = ["blocks.0.self_attn.q", "blocks.0.self_attn.k", "blocks.0.self_attn.v",
                "blocks.1.self_attn.k", "blocks.1.cross_attn.v", "blocks.1.cross_attn.o",
                "blocks.0.ffn.w2", "blocks.1.modulation.1", "head.head"]


@pytest.fixture(scope="module")
def comfy_env(comfy_models):
    sys.path.insert(0, comfy_models["comfyui_dir"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # must precede comfy.model_management's device probe
    import comfy.lora
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import folder_paths
    from longcat_pack.nodes import loading, model_adapter, scaled_ops

    return {"lora": comfy.lora, "samplers": comfy.samplers, "sd": comfy.sd, "utils": comfy.utils,
            "folder_paths": folder_paths, "loading": loading, "model_adapter": model_adapter,
            "scaled_ops": scaled_ops}


@pytest.fixture(scope="module")
def files(comfy_env, tmp_path_factory):
    """One tiny official state dict written as: official files, Kijai bf16 / scaled fp8, a Kijai LoRA."""
    root = tmp_path_factory.mktemp("kijai")
    (root / "dit").mkdir()
    (root / "loras").mkdir()
    torch.manual_seed(7)
    official = {k: torch.randn_like(v) / math.sqrt(v.shape[-1])
                for k, v in LongCatVideoDiT(**DIT_CONFIG).state_dict().items()}
    bf16 = {k: v.bfloat16() for k, v in official.items()}
    kijai_fp8, dequantized = to_kijai_scaled_fp8(official)
    # The loader keeps scaled weights fp8 and stores the rest in bf16: the reference does too.
    reference = {k: v if is_fp8_linear(k) else v.bfloat16().float() for k, v in dequantized.items()}
    shapes = {k: tuple(v.shape) for k, v in official.items() if v.ndim == 2}
    lora, raw = kijai_lora(shapes, LORA_TARGETS, rank=2, seed=8)
    written = {"official_bf16": bf16, "LongCat_TI2V_comfy_bf16": to_kijai(bf16),
               "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ": kijai_fp8, "reference": reference}
    for name, state in written.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "dit" / f"{name}.safetensors"))
    save_file(lora, str(root / "loras" / "LongCat_distill_lora_alpha64_bf16.safetensors"))
    comfy_env["folder_paths"].add_model_folder_path("diffusion_models", str(root / "dit"))
    comfy_env["folder_paths"].add_model_folder_path("loras", str(root / "loras"))
    return {"dir": root / "dit", "reference": reference, "raw": raw,
            "lora": "LongCat_distill_lora_alpha64_bf16.safetensors",
            "lora_sd": lora}


def _load_node(comfy_env, name, weight_dtype="default"):
    return comfy_env["loading"].LongCatModelLoader.execute(f"{name}.safetensors", weight_dtype).result[0]


def _load_fp32(comfy_env, files, name):
    return comfy_env["model_adapter"].load_longcat_model(files["dir"] / f"{name}.safetensors", torch.float32)


def _context():
    context = torch.zeros(1, 512, 4096)
    context[:, :6] = torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(0))
    return context


def _ksampler(comfy_env, patcher):
    samplers = comfy_env["samplers"]
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(1))
    cond = [[_context(), {}]]
    return samplers.sample(patcher, noise, cond, cond, 1.0, "cpu", samplers.ksampler("euler"),
                           torch.tensor([1.0, 0.6, 0.0]), latent_image=torch.zeros_like(noise))


def _forward(dit):
    x = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return dit(x, torch.tensor([600.0]), _context())


def test_loader_node_takes_the_kijai_bf16_file(comfy_env, files):
    kijai = _load_node(comfy_env, "LongCat_TI2V_comfy_bf16")
    ours = _load_node(comfy_env, "official_bf16")
    want = ours.model.diffusion_model.state_dict()
    got = kijai.model.diffusion_model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(_ksampler(comfy_env, kijai), _ksampler(comfy_env, ours), rtol=0, atol=0)


def test_scaled_fp8_file_stays_fp8_and_samples_as_fp8_times_scale(comfy_env, files):
    patcher = _load_node(comfy_env, "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ")  # default: keep fp8
    qkv = patcher.model.diffusion_model.blocks[0].attn.qkv
    assert isinstance(qkv, comfy_env["scaled_ops"].ScaledFP8Ops.Linear)
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.scale_weight.shape == (3 * C,)
    reference = _load_fp32(comfy_env, files, "reference")
    torch.testing.assert_close(_ksampler(comfy_env, patcher), _ksampler(comfy_env, reference),
                               rtol=1e-4, atol=1e-4)


def test_stock_key_map_puts_kijai_parts_on_fused_rows(comfy_env, files):
    patcher = _load_node(comfy_env, "official_bf16")
    key_map = comfy_env["lora"].model_lora_keys_unet(patcher.model, {})
    assert key_map["diffusion_model.blocks.1.self_attn.k"] == (
        "diffusion_model.blocks.1.attn.qkv.weight", (0, C, C))
    assert key_map["diffusion_model.blocks.0.cross_attn.v"] == (
        "diffusion_model.blocks.0.cross_attn.kv_linear.weight", (0, C, C))
    assert key_map["diffusion_model.head.head"] == "diffusion_model.final_layer.linear.weight"
    assert key_map["diffusion_model.blocks.0.attn.qkv"] == "diffusion_model.blocks.0.attn.qkv.weight"


@pytest.mark.parametrize("how", ["LongCatLoRA", "LoraLoaderModelOnly"])
def test_kijai_lora_patches_equal_a_merge_by_hand(comfy_env, files, how):
    base = _load_fp32(comfy_env, files, "reference")
    if how == "LongCatLoRA":
        patched = comfy_env["loading"].LongCatLoRA.execute(base, files["lora"], 0.7).result[0]
    else:
        patched, _ = comfy_env["sd"].load_lora_for_models(base, None, files["lora_sd"], 0.7, 0)
    want = merge_by_hand(files["reference"], files["raw"], 0.7)
    patched.patch_model()
    got = patched.model.diffusion_model.state_dict()
    patched.unpatch_model()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("lowvram", [False, True])
def test_kijai_lora_on_scaled_fp8(comfy_env, files, lowvram):
    """Patched in place (dequantize, add, re-quantize with the row scales) or, offloaded, per
    forward on the dequantized weight (ComfyUI's LowVramPatch): both follow the merged model."""
    base = _load_node(comfy_env, "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ")
    patched, _ = comfy_env["sd"].load_lora_for_models(base, None, files["lora_sd"], 1.0, 0)
    merged = merge_by_hand(files["reference"], files["raw"], 1.0)
    want = _forward(weights.load_dit(_write(files["dir"] / "merged.safetensors", merged)))
    try:
        with torch.no_grad():  # ComfyUI patches and samples under inference mode
            patched.load(torch.device("cpu"), lowvram_model_memory=1 if lowvram else 0, full_load=not lowvram)
        dit = patched.model.diffusion_model
        qkv = dit.blocks[0].attn.qkv
        assert qkv.weight.dtype == torch.float8_e4m3fn
        if lowvram:  # the patch runs at each forward, weights untouched
            assert qkv.weight_function and torch.equal(qkv.weight.view(torch.uint8),
                                                       base.model.diffusion_model.blocks[0].attn.qkv.weight.view(torch.uint8))
        got = _forward(dit)
    finally:
        patched.unpatch_model()
    # Offloaded: exact up to float order; in place: the patched weights are re-quantized to fp8.
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < (1e-5 if lowvram else 0.05), rel


def _write(path, state):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
