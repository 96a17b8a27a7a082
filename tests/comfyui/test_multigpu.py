"""LongCat Multi-GPU in-process with ComfyUI on the CPU (Gloo, 2 processes): the node's MODEL
samples like the one-GPU MODEL (LongCat Sampler with the KV cache, KSampler, Long Video with
refinement), re-sends weights after a LoRA, survives Cancel, reports a killed worker, and leaves
no worker behind after ComfyUI unloads the model. The tests share one model and run in order."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfyui

# ComfyUI on the CPU attends with sub-quadratic attention, the worker with SDPA: rounding only.
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pids, within=10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_running(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def comfy(comfy_models):
    if sys.platform != "linux":
        pytest.skip("multi-GPU workers need Linux")
    sys.path.insert(0, comfy_models["comfyui_dir"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management
    import comfy.samplers
    import folder_paths
    from longcat_pack.nodes import (
        loading,
        long_video,
        model_adapter,
        multigpu,
        sampling,
    )

    folder_paths.add_model_folder_path("loras", comfy_models["loras"])
    one = model_adapter.load_longcat_model(comfy_models["dit"], torch.float32)
    return {"mm": comfy.model_management, "samplers": comfy.samplers, "sampling": sampling,
            "loading": loading, "long_video": long_video, "one": one,
            "multi": multigpu.LongCatMultiGPU.execute(one, 2, 60).result[0]}


def _context(tokens, seed):
    context = torch.zeros(1, 512, 4096)
    context[:, :tokens] = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(seed))
    return [[context, {}]]


def _sample(comfy, model):
    """LongCat Sampler on a continuation latent (1 clean frame, KV cache) with CFG."""
    raw = torch.zeros(1, 16, 3, 4, 8)
    raw[:, :, :1] = torch.randn(1, 16, 1, 4, 8, generator=torch.Generator().manual_seed(3))
    latent = {"samples": raw, "longcat_num_cond_latents": 1}
    out, _ = comfy["sampling"].sample_latent(model, _context(6, 1), _context(1, 2), latent,
                                             torch.tensor([1.0, 0.8, 0.4, 0.0]), seed=5, guidance=3.0,
                                             use_kv_cache=True, offload_kv_cache="gpu")
    return out["samples"]


def _pids(model):
    return model.model_options["transformer_options"]["longcat_multi_gpu"].pool.pids()


class _StandinVae:
    """ComfyUI's VAE encode/decode signatures over the stand-in VAE (fast, exact)."""

    def encode(self, pixels):
        from longcat_pack.longcat.standin_vae import standin_encode

        return standin_encode(pixels)

    def decode(self, latent):
        from longcat_pack.longcat.standin_vae import standin_decode

        return standin_decode(latent).unsqueeze(0)


def test_sampler_with_kv_cache_equals_one_gpu(comfy):
    torch.testing.assert_close(_sample(comfy, comfy["multi"]), _sample(comfy, comfy["one"]), **CLOSE)
    pids = _pids(comfy["multi"])
    assert len(pids) == 1 and _running(pids[0])


def test_ksampler_equals_one_gpu(comfy):
    samplers = comfy["samplers"]
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(2))

    def run(model):
        return samplers.sample(model, noise, _context(6, 1), _context(1, 2), 2.0, "cpu",
                               samplers.ksampler("euler"), torch.tensor([1.0, 0.5, 0.0]),
                               latent_image=torch.zeros_like(noise))

    torch.testing.assert_close(run(comfy["multi"]), run(comfy["one"]), **CLOSE)


def test_long_video_with_refinement_equals_one_gpu(comfy):
    from longcat_pack.nodes.long_video_settings import LongVideoSettings

    settings = LongVideoSettings(num_segments=1, width=64, height=32, num_frames=9, num_cond_frames=5,
                                 guidance_scale=1.0, seed=7, use_kv_cache=True, t_thresh=0.5,
                                 refine_width=128, refine_height=64,
                                 t2v_sigmas=torch.tensor([1.0, 0.5, 0.0]),
                                 vc_sigmas=torch.tensor([1.0, 0.5, 0.0]))

    def run(model):
        frames, _ = comfy["long_video"].generate(model, _StandinVae(), _context(6, 1), None, model,
                                                 _context(1, 2), settings)
        return frames

    got = run(comfy["multi"])
    assert got.shape[0] == 26
    torch.testing.assert_close(got, run(comfy["one"]), **CLOSE)


def test_lora_after_the_node_is_sent_to_the_worker(comfy):
    """A LoRA after the node: rank 0 patches its weights; the same worker gets them again."""
    lora, name = comfy["loading"].LongCatLoRA, "longcat_tiny_official_lora.safetensors"
    pids = _pids(comfy["multi"])
    want = _sample(comfy, lora.execute(comfy["one"], name, 0.7).result[0])
    multi_lora = lora.execute(comfy["multi"], name, 0.7).result[0]
    got = _sample(comfy, multi_lora)
    torch.testing.assert_close(got, want, **CLOSE)
    assert not torch.allclose(got, _sample(comfy, comfy["one"]), **CLOSE)
    assert _pids(multi_lora) == pids


def test_cancel_stops_the_run_not_the_workers(comfy):
    """ComfyUI's interrupt flag ends the run; the workers stay. ComfyUI 0.3.64 checks it between
    steps; newer versions inside every layer, where rank 0 then drains the step's collectives."""
    mm, multi = comfy["mm"], comfy["multi"]
    pids, calls = _pids(multi), []

    def cancel_during_second_call(module, args):
        calls.append(1)
        if len(calls) == 2:
            mm.interrupt_current_processing(True)

    hook = multi.model.diffusion_model.register_forward_pre_hook(cancel_during_second_call)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(comfy, multi)
    finally:
        hook.remove()
        mm.interrupt_current_processing(False)
    assert _pids(multi) == pids
    torch.testing.assert_close(_sample(comfy, multi), _sample(comfy, comfy["one"]), **CLOSE)


def test_worker_killed_mid_step_is_reported_and_replaced(comfy):
    multi = comfy["multi"]
    pids = _pids(multi)
    hook = multi.model.diffusion_model.blocks[1].register_forward_pre_hook(
        lambda module, args: os.kill(pids[0], signal.SIGKILL))
    try:
        with pytest.raises(RuntimeError, match=f"worker rank 1 \\(cpu, pid {pids[0]}\\) was killed by signal 9"):
            _sample(comfy, multi)
    finally:
        hook.remove()
    assert _gone(pids)
    torch.testing.assert_close(_sample(comfy, multi), _sample(comfy, comfy["one"]), **CLOSE)
    assert _pids(multi) and _pids(multi) != pids


def test_unload_models_stops_the_workers(comfy):
    pids = _pids(comfy["multi"])
    assert pids
    comfy["mm"].unload_all_models()
    assert _gone(pids)  # the runner's watch sees the unload within a second


def test_kijai_scaled_fp8_with_a_lora_equals_one_gpu(comfy, comfy_models):
    """Kijai's scaled fp8 file (fp8 weights, per-row scales; ComfyUI keeps them fp8) through the
    node, then with a Kijai-layout LoRA patched in: the workers build the same DiT as the loader
    (they used to refuse the scale tensors) and sample like one GPU."""
    from longcat_pack.nodes import model_adapter

    path = Path(comfy_models["dit"]).parent / "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ_tiny.safetensors"
    one = model_adapter.load_longcat_model(path)
    qkv = one.model.diffusion_model.blocks[0].attn.qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.scale_weight.dtype == torch.float32
    from longcat_pack.nodes.multigpu import LongCatMultiGPU

    node_model = LongCatMultiGPU.execute(one, 2, 60).result[0]
    torch.testing.assert_close(_sample(comfy, node_model), _sample(comfy, one), **CLOSE)
    lora, name = comfy["loading"].LongCatLoRA, "LongCat_distill_lora_tiny_KJ.safetensors"
    want = _sample(comfy, lora.execute(one, name, 0.8).result[0])
    got = _sample(comfy, lora.execute(node_model, name, 0.8).result[0])
    torch.testing.assert_close(got, want, **CLOSE)
    assert not torch.allclose(got, _sample(comfy, one), **CLOSE)
    node_model.model_options["transformer_options"]["longcat_multi_gpu"].stop()
