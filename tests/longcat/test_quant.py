"""ComfyUI-format quantized files outside ComfyUI: reading them (official and Kijai layouts, per
tensor and per row, fp8 and int8), writing them (converter), and the one-line refusals."""

import json

import pytest
import torch
from comfy_quant_layout import conf_bytes, to_comfy_quant
from kijai_layout import to_kijai_scaled_fp8
from longcat_pack.longcat import quant, weights
from longcat_pack.longcat.convert import convert
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_dit import TINY, random_state

FORMATS = [(torch.float8_e4m3fn, False), (torch.float8_e4m3fn, True), (torch.int8, False), (torch.int8, True)]


def _save(state, path, metadata=None):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def _forward(model):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, TINY["in_channels"], 2, 4, 4, generator=gen)
    context = torch.randn(1, 6, TINY["caption_channels"], generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), context)


@pytest.fixture(scope="module")
def official():
    return random_state(4)


@pytest.mark.parametrize("dtype,per_row", FORMATS)
def test_quantize_dequantizes_within_one_step_and_fp8_scales_are_bf16(dtype, per_row):
    weight = torch.randn(24, 40) * torch.linspace(0.01, 3.0, 24)[:, None]
    stored, scale = quant.quantize(weight, dtype, per_row)
    assert stored.dtype == dtype and scale.shape == ((24, 1) if per_row else ())
    back = stored.float() * scale
    if dtype == torch.int8:
        assert (back - weight).abs().le(scale / 2 + 1e-7).all()
    else:  # e4m3fn: 3 mantissa bits, relative rounding ≤ 2^-4 (plus the clamp of the largest value)
        assert torch.equal(scale, scale.bfloat16().float())
        assert ((back - weight).abs() <= weight.abs() / 16 + scale * 2 ** -6 + 1e-7).all()


@pytest.mark.parametrize("kijai", [False, True], ids=["official", "kijai"])
@pytest.mark.parametrize("dtype,per_row", FORMATS)
def test_comfy_quant_file_loads_as_its_dequantized_model(official, tmp_path, dtype, per_row, kijai):
    """Weights stay quantized in memory (one fp32 scale per row) and the model computes exactly as
    the dequantized bf16 file does; formats declared in the header or per layer, any prefix."""
    state, metadata, dequantized = to_comfy_quant(official, dtype, per_row, kijai=kijai, in_tensors=kijai,
                                                  prefix="model.diffusion_model." if kijai else "")
    path = _save(state, tmp_path / "quantized.safetensors", metadata)
    reference = weights.load_dit(_save(dequantized, tmp_path / "dequantized.safetensors"))
    model = weights.load_dit(path)
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.dtype == dtype and qkv.scale_weight.shape == (3 * TINY["hidden_size"],)
    assert model.blocks[0].adaLN_modulation[1].weight.dtype == torch.bfloat16
    torch.testing.assert_close(_forward(model), _forward(reference), rtol=0, atol=0)
    _, _, layers = weights.inspect_quantized(path)
    assert {info.format for info in layers.values()} == {quant.format_of(dtype)}
    assert len(layers) == len(quant.QUANTIZED_LINEARS) * TINY["depth"]


@pytest.mark.parametrize("name", sorted(["fp8", "fp8_rowwise", "int8", "int8_rowwise"]))
def test_converter_writes_comfy_format_that_loads_exactly(official, tmp_path, name, caplog):
    src = _save(official, tmp_path / "official.safetensors")
    with caplog.at_level("INFO"):
        out = convert(src, tmp_path / f"{name}.safetensors", quantize=name)
    assert "final layer" in caplog.text and "adaLN modulation" in caplog.text  # says what stays bf16, and why
    with safe_open(str(out), "pt") as f:
        layers = json.loads(f.metadata()["_quantization_metadata"])["layers"]
        stored = {k: f.get_tensor(k) for k in f.keys()}
    dtype, per_row = {"fp8": (torch.float8_e4m3fn, False), "fp8_rowwise": (torch.float8_e4m3fn, True),
                      "int8": (torch.int8, False), "int8_rowwise": (torch.int8, True)}[name]
    assert sorted(layers) == sorted(k[:-len(".weight")] for k in official if quant.is_quantized_linear(k))
    dequantized = {}
    for key, value in official.items():
        layer = key[:-len(".weight")]
        if layer in layers:
            assert layers[layer] == {"format": quant.format_of(dtype)} and stored[key].dtype == dtype
            scale = stored[f"{layer}.weight_scale"]
            assert scale.shape == ((value.shape[0], 1) if per_row else ())
            dequantized[key] = stored[key].float() * scale
            assert (dequantized[key] - value).abs().max() <= scale.max() * (0.5 if dtype == torch.int8 else 32)
        else:
            assert stored[key].dtype == torch.bfloat16 and torch.equal(stored[key], value.bfloat16())
            dequantized[key] = stored[key].float()
    reference = weights.load_dit(_save(dequantized, tmp_path / "reference.safetensors"))
    torch.testing.assert_close(_forward(weights.load_dit(out)), _forward(reference), rtol=0, atol=0)


def test_kijai_scaled_fp8_converts_to_fp8_rowwise_without_loss(official, tmp_path):
    kijai_sd, dequantized = to_kijai_scaled_fp8(official)
    src = _save(kijai_sd, tmp_path / "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ.safetensors")
    out = convert(src, tmp_path / "rowwise.safetensors", quantize="fp8_rowwise")
    want = weights.load_state_dict(src)
    got = weights.load_state_dict(out)
    for key in want:
        if weights.is_scale_key(key):
            assert torch.equal(got[key], want[key]), key
        elif key in dequantized and want[key].dtype == torch.float8_e4m3fn:
            assert torch.equal(got[key].view(torch.uint8), want[key].view(torch.uint8)), key


def test_unsupported_format_names_layer_and_format(official, tmp_path):
    state, metadata, _ = to_comfy_quant(official, torch.float8_e4m3fn)
    layers = json.loads(metadata["_quantization_metadata"])
    layers["layers"]["blocks.1.ffn.w2"] = {"format": "mxfp8"}
    path = _save(state, tmp_path / "mxfp8.safetensors", {"_quantization_metadata": json.dumps(layers)})
    with pytest.raises(ValueError, match=r"^blocks\.1\.ffn\.w2: quantization format 'mxfp8' is not supported"):
        weights.load_dit(path)


def test_quantized_layer_that_is_not_a_longcat_linear_is_named(official, tmp_path):
    state, _, _ = to_comfy_quant(official, torch.int8, in_tensors=True)
    state["blocks.0.attn.q_norm.weight"] = torch.zeros(TINY["hidden_size"] // TINY["num_heads"], dtype=torch.int8)
    state["blocks.0.attn.q_norm.weight_scale"] = torch.tensor(1.0)
    state["blocks.0.attn.q_norm.comfy_quant"] = conf_bytes({"format": "int8_tensorwise"})
    with pytest.raises(ValueError, match=r"^blocks\.0\.attn\.q_norm: quantized as int8_tensorwise, but the "
                                         r"LongCat DiT has no Linear named"):
        weights.load_dit(_save(state, tmp_path / "bad.safetensors"))


def test_nvfp4_refused_outside_comfyui_in_one_line(official, tmp_path):
    state, _, _ = to_comfy_quant(official, torch.int8, in_tensors=True)
    layer = "blocks.0.ffn.w1"
    out_f, in_f = official[f"{layer}.weight"].shape
    state[f"{layer}.weight"] = torch.zeros(out_f, in_f // 2, dtype=torch.uint8)
    state[f"{layer}.weight_scale"] = torch.zeros(out_f, in_f // 16).to(torch.float8_e4m3fn)
    state[f"{layer}.weight_scale_2"] = torch.tensor(1.0)
    state[f"{layer}.comfy_quant"] = conf_bytes({"format": "nvfp4"})
    path = _save(state, tmp_path / "nvfp4.safetensors")
    assert weights.inspect_quantized(path)[2][layer].format == "nvfp4"  # headers check out
    with pytest.raises(ValueError, match=r"^blocks\.0\.ffn\.w1: nvfp4 weights load only inside ComfyUI"):
        weights.load_dit(path)
    with pytest.raises(ValueError, match=r"^blocks\.0\.ffn\.w1: nvfp4 weights cannot be loaded as"):
        weights.load_state_dict(path, torch.bfloat16)


def test_kijai_parts_in_different_formats_are_refused(official, tmp_path):
    state, _, _ = to_comfy_quant(official, torch.int8, kijai=True, in_tensors=True)
    state["blocks.0.self_attn.k.comfy_quant"] = conf_bytes({"format": "float8_e4m3fn"})
    state["blocks.0.self_attn.k.weight"] = state["blocks.0.self_attn.k.weight"].float().to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"^blocks\.0\.attn\.qkv: Kijai-layout parts .*cannot be joined"):
        weights.inspect_checkpoint(_save(state, tmp_path / "mixed.safetensors"))


def test_fp8_matmul_is_the_row_scaled_fp8_product():
    """Kijai's scaled fp8 with quantized_matmul: activations quantized per token, the weight's row
    scales kept, fp32 accumulation, bf16 out: the product of the two rounded operands."""
    from longcat_pack.longcat.scaled_fp8 import fp8_matmul

    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(48, 64, generator=gen)
    stored, scale = quant.quantize(weight, torch.float8_e4m3fn, per_row=True)
    x = (torch.randn(2, 5, 64, generator=gen) * torch.logspace(-3, 2, 5)[None, :, None]).bfloat16()
    bias = torch.randn(48, generator=gen)
    got = fp8_matmul(x, stored, scale.reshape(-1), bias)
    rows = x.reshape(-1, 64)
    x_scale = rows.abs().amax(1, keepdim=True).float() / 448
    x_fp8 = (rows / x_scale.bfloat16()).clamp(-448, 448).to(torch.float8_e4m3fn)
    want = (x_fp8.float() * x_scale) @ (stored.float() * scale).T + bias.bfloat16().float()
    assert got.dtype == torch.bfloat16 and got.shape == (2, 5, 48)
    torch.testing.assert_close(got.float(), want.reshape(2, 5, 48), rtol=2 ** -7, atol=1e-6)
    exact = torch.nn.functional.linear(x.float(), stored.float() * scale, bias)
    assert 0 < ((got.float() - exact).norm() / exact.norm()).item() < 0.05  # rows of 1e-3 and 1e2 alike
