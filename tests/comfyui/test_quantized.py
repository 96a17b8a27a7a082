"""ComfyUI-format quantized LongCat files inside ComfyUI (in-process, CPU): the loader node builds
the DiT on ComfyUI's mixed-precision ops, every format samples as its dequantized model, the
emulated formats say so, an older ComfyUI gets one line naming the version (0.3.64 for real, or
simulated on a newer one), and Kijai's scaled fp8 can multiply in fp8 (needs ``COMFYUI_DIR`` and
ComfyUI's Python packages; the mixed-precision tests skip on a ComfyUI without those ops)."""

import logging
import math
import sys

import pytest
import torch
from longcat_pack.longcat.convert import convert
from longcat_pack.longcat.dit import LongCatVideoDiT
from safetensors.torch import save_file

from comfy_quant_layout import conf_bytes, to_comfy_quant
from kijai_layout import is_fp8_linear, kijai_lora, merge_by_hand, to_kijai_scaled_fp8
from tiny_models import DIT_CONFIG

pytestmark = pytest.mark.comfyui
# name: (stored dtype, per row, Kijai layout, formats in comfy_quant tensors, input_scale)
SCALED_FILES = {"fp8": (torch.float8_e4m3fn, False, False, False, None),
                "fp8_input_scale": (torch.float8_e4m3fn, False, False, True, 0.05),
                "int8_rowwise": (torch.int8, True, False, False, None),
                "int8_kijai": (torch.int8, False, True, True, None)}


@pytest.fixture(scope="module")
def comfy_env(comfy_models):
    sys.path.insert(0, comfy_models["comfyui_dir"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # must precede comfy.model_management's device probe
    import comfy.model_management
    import comfy.ops
    import comfy.samplers
    import folder_paths
    from longcat_pack.nodes import loading, model_adapter

    env = {"samplers": comfy.samplers, "mm": comfy.model_management, "ops": comfy.ops,
           "folder_paths": folder_paths, "loading": loading, "model_adapter": model_adapter, "quant_ops": None}
    if hasattr(comfy.ops, "mixed_precision_ops"):
        import comfy.quant_ops

        env["quant_ops"] = comfy.quant_ops
    return env


@pytest.fixture
def mixed(comfy_env):
    if comfy_env["quant_ops"] is None:
        pytest.skip("this ComfyUI has no mixed-precision ops (0.8.0 or newer has them)")


FILE_FORMATS = {"fp8": "float8_e4m3fn", "fp8_input_scale": "float8_e4m3fn", "int8_rowwise": "int8_tensorwise",
                "int8_kijai": "int8_tensorwise", "nvfp4": "nvfp4"}


def _skip_unless_ops_for(comfy_env, name):
    if FILE_FORMATS[name] not in comfy_env["quant_ops"].QUANT_ALGOS:
        pytest.skip(f"this ComfyUI's mixed-precision ops have no {FILE_FORMATS[name]} (int8: 0.33.0)")


def _nvfp4(official, quant_ops):
    """Official layout, block Linears in nvfp4 (ComfyUI's own quantizer), the rest bf16."""
    state, layers, dequantized = {}, {}, {}
    for key, value in official.items():
        if not is_fp8_linear(key):
            state[key] = value.bfloat16()
            dequantized[key] = value.bfloat16().float()
            continue
        q = quant_ops.QuantizedTensor.from_float(value.float(), "TensorCoreNVFP4Layout")  # dequantizes in fp32
        state.update({k: v.contiguous() for k, v in q.state_dict(key).items()})
        state[key[:-len("weight")] + "comfy_quant"] = conf_bytes({"format": "nvfp4"})
        dequantized[key] = q.dequantize().float()
    return state, dequantized


@pytest.fixture(scope="module")
def files(comfy_env, tmp_path_factory):
    """Each format written from one tiny official state dict, and each one's dequantized model."""
    root = tmp_path_factory.mktemp("quantized")
    torch.manual_seed(11)
    official = {k: torch.randn_like(v) / math.sqrt(v.shape[-1])
                for k, v in LongCatVideoDiT(**DIT_CONFIG).state_dict().items()}
    references = {}

    def write(name, state, metadata=None):
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / f"{name}.safetensors"),
                  metadata=metadata)

    for name, (dtype, per_row, kijai, in_tensors, input_scale) in SCALED_FILES.items():
        state, metadata, dequantized = to_comfy_quant(
            official, dtype, per_row, kijai=kijai, in_tensors=in_tensors, input_scale=input_scale,
            prefix="model.diffusion_model." if kijai else "")
        write(name, state, metadata)
        references[name] = dequantized
    if comfy_env["quant_ops"] is not None:  # ComfyUI's own nvfp4 quantizer
        state, references["nvfp4"] = _nvfp4(official, comfy_env["quant_ops"])
        write("nvfp4", state)
    kijai_fp8, dequantized = to_kijai_scaled_fp8(official)
    # The loader keeps the scaled weights and stores the rest in bf16: the reference does too.
    references["kijai_fp8"] = {k: v if is_fp8_linear(k) else v.bfloat16().float() for k, v in dequantized.items()}
    write("kijai_fp8", kijai_fp8)
    for name, reference in references.items():
        write(f"{name}_reference", reference)
    comfy_env["folder_paths"].add_model_folder_path("diffusion_models", str(root))
    return root


STRENGTH = 4.0


@pytest.mark.parametrize("name", ["fp8", "int8_rowwise"])
def test_kijai_lora_on_mixed_precision_weights(comfy_env, mixed, files, name):
    """ComfyUI's LoRA loader on quantized layers (a q / k / v part of the fused qkv included):
    ComfyUI dequantizes, adds and re-quantizes them, so the model follows the merged one."""
    _skip_unless_ops_for(comfy_env, name)
    import comfy.sd

    reference = _read(files / f"{name}_reference.safetensors")
    shapes = {k: tuple(v.shape) for k, v in reference.items() if v.ndim == 2}
    lora, raw = kijai_lora(shapes, ["blocks.0.self_attn.k", "blocks.1.ffn.w2", "blocks.1.cross_attn.o"], rank=2, seed=5)
    merged = files / f"{name}_merged_reference.safetensors"
    save_file({k: v.contiguous() for k, v in merge_by_hand(reference, raw, STRENGTH).items()}, str(merged))
    want = _ksampler(comfy_env, comfy_env["model_adapter"].load_longcat_model(merged, torch.float32))
    without = _rel(_ksampler(comfy_env, _load(comfy_env, name)), want)
    patched, _ = comfy.sd.load_lora_for_models(_load(comfy_env, name), None, lora, STRENGTH, 0)
    with torch.no_grad():
        patched.load(torch.device("cpu"), full_load=True)
    try:
        assert isinstance(patched.model.diffusion_model.blocks[0].attn.qkv.weight,
                          comfy_env["quant_ops"].QuantizedTensor)
        got = _ksampler(comfy_env, patched)
    finally:
        patched.unpatch_model()
    # The patched weights are re-quantized (stochastic rounding); without the LoRA: far off.
    assert _rel(got, want) < without / 10, (_rel(got, want), without)


def _read(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _load(comfy_env, name, quantized_matmul=False):
    node = comfy_env["loading"].LongCatModelLoader
    return node.execute(f"{name}.safetensors", "default", quantized_matmul).result[0]


def _reference(comfy_env, files, name):
    return comfy_env["model_adapter"].load_longcat_model(files / f"{name}_reference.safetensors", torch.float32)


def _ksampler(comfy_env, patcher):
    samplers = comfy_env["samplers"]
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(1))
    context = torch.zeros(1, 512, 4096)
    context[:, :6] = torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(0))
    cond = [[context, {}]]
    return samplers.sample(patcher, noise, cond, cond, 1.0, "cpu", samplers.ksampler("euler"),
                           torch.tensor([1.0, 0.6, 0.0]), latent_image=torch.zeros_like(noise))


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", [*SCALED_FILES, "nvfp4"])
def test_quantized_file_runs_on_mixed_precision_ops_as_its_dequantized_model(comfy_env, mixed, files, name):
    _skip_unless_ops_for(comfy_env, name)
    patcher = _load(comfy_env, name)
    dit = patcher.model.diffusion_model
    qkv, modulation = dit.blocks[0].attn.qkv, dit.blocks[0].adaLN_modulation[1]
    assert isinstance(qkv.weight, comfy_env["quant_ops"].QuantizedTensor)  # stays quantized in memory
    assert qkv.quant_format == FILE_FORMATS[name]
    assert not isinstance(modulation.weight, comfy_env["quant_ops"].QuantizedTensor)
    if name == "fp8_input_scale":
        assert float(qkv.input_scale) == pytest.approx(0.05)
    got = _ksampler(comfy_env, patcher)
    want = _ksampler(comfy_env, _reference(comfy_env, files, name))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_int8_matmul_follows_the_dequantized_model(comfy_env, mixed, files):
    """quantized_matmul: int8 has no GPU gate in ComfyUI, so it multiplies in int8 here too."""
    _skip_unless_ops_for(comfy_env, "int8_rowwise")
    got = _ksampler(comfy_env, _load(comfy_env, "int8_rowwise", quantized_matmul=True))
    want = _ksampler(comfy_env, _reference(comfy_env, files, "int8_rowwise"))
    assert 0 < _rel(got, want) < 0.05


def test_emulated_format_is_said_in_the_log(comfy_env, mixed, files, caplog):
    with caplog.at_level(logging.WARNING):
        _load(comfy_env, "nvfp4", quantized_matmul=True)
    assert "no nvfp4 matrix multiplication" in caplog.text and "stay quantized in memory" in caplog.text


@pytest.mark.parametrize("missing,name,version", [("ops", "fp8", "0.8.0"), ("ops", "int8_rowwise", "0.33.0"),
                                                  ("int8", "int8_rowwise", "0.33.0")])
def test_older_comfyui_gets_one_line_naming_the_version(comfy_env, files, monkeypatch, missing, name, version):
    if missing == "ops":  # as 0.3.64, which has no mixed-precision ops at all (there: for real)
        if comfy_env["quant_ops"] is not None:
            monkeypatch.delattr(comfy_env["ops"], "mixed_precision_ops")
    elif comfy_env["quant_ops"] is None:
        pytest.skip("simulates 0.8.0 on a ComfyUI with mixed-precision ops")
    elif "int8_tensorwise" in comfy_env["quant_ops"].QUANT_ALGOS:  # as 0.8.0 (there: for real)
        algos = {k: v for k, v in comfy_env["quant_ops"].QUANT_ALGOS.items() if k != "int8_tensorwise"}
        monkeypatch.setattr(comfy_env["quant_ops"], "QUANT_ALGOS", algos)
    with pytest.raises(ValueError) as err:
        _load(comfy_env, name)
    message = str(err.value)
    assert "\n" not in message and f"{name}.safetensors" in message
    assert message.endswith(f"update ComfyUI to {version} or newer")


def test_kijai_scaled_fp8_multiplies_in_fp8_when_asked(comfy_env, files, monkeypatch):
    exact = _load(comfy_env, "kijai_fp8")
    assert type(exact.model.diffusion_model.blocks[0].attn.qkv).fp8_matmul is False
    want = _ksampler(comfy_env, _reference(comfy_env, files, "kijai_fp8"))
    torch.testing.assert_close(_ksampler(comfy_env, exact), want, rtol=1e-4, atol=1e-4)
    # ComfyUI runs on the CPU here: the device reports no fp8 compute, so the option falls back.
    assert type(_load(comfy_env, "kijai_fp8", True).model.diffusion_model.blocks[0].attn.qkv).fp8_matmul is False
    monkeypatch.setattr(comfy_env["mm"], "supports_fp8_compute", lambda device=None: True)
    monkeypatch.setattr(comfy_env["mm"], "unet_manual_cast", lambda *args, **kwargs: torch.bfloat16)
    fast = _load(comfy_env, "kijai_fp8", True)
    assert type(fast.model.diffusion_model.blocks[0].attn.qkv).fp8_matmul is True
    assert 0 < _rel(_ksampler(comfy_env, fast), want) < 0.05


def test_converter_output_loads_through_the_node(comfy_env, files):
    """fp8 per tensor (mixed-precision ops) and per row (our scaled ops: any ComfyUI), from Kijai's file."""
    for name in ("fp8", "fp8_rowwise") if comfy_env["quant_ops"] is not None else ("fp8_rowwise",):
        convert(files / "kijai_fp8.safetensors", files / f"converted_{name}.safetensors", quantize=name)
        patcher = _load(comfy_env, f"converted_{name}")
        got = _ksampler(comfy_env, patcher)
        want = _ksampler(comfy_env, _reference(comfy_env, files, "kijai_fp8"))
        assert _rel(got, want) < (1e-5 if name == "fp8_rowwise" else 0.1), name
