"""LongCat Multi-GPU in-process with ComfyUI on the CPU (Gloo, 2 processes): the node's MODEL
samples like the one-GPU MODEL, re-sends weights after a LoRA, survives Cancel, reports a
killed worker, and leaves no worker behind after ComfyUI unloads the model."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfyui


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
    import folder_paths
    from longcat_pack.nodes import loading, model_adapter, multigpu, sampling

    folder_paths.add_model_folder_path("loras", comfy_models["loras"])
    return {"mm": comfy.model_management, "adapter": model_adapter, "multigpu": multigpu,
            "sampling": sampling, "loading": loading}


def _context(tokens, seed):
    context = torch.zeros(1, 512, 4096)
    context[:, :tokens] = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(seed))
    return [[context, {}]]


def _sample(comfy, model, callback_hook=None):
    """LongCat Sampler on a continuation latent (1 clean frame, KV cache) with CFG."""
    raw = torch.zeros(1, 16, 3, 4, 8)
    raw[:, :, :1] = torch.randn(1, 16, 1, 4, 8, generator=torch.Generator().manual_seed(3))
    latent = {"samples": raw, "longcat_num_cond_latents": 1}
    out, _ = comfy["sampling"].sample_latent(model, _context(6, 1), _context(1, 2), latent,
                                             torch.tensor([1.0, 0.8, 0.4, 0.0]), seed=5, guidance=3.0,
                                             use_kv_cache=True, offload_kv_cache=False)
    return out["samples"]


def _runner(model):
    return model.model_options["transformer_options"]["longcat_multi_gpu"]


def test_multi_gpu_model_samples_like_one_gpu_through_lora_cancel_failure_and_unload(comfy, comfy_models):
    mm, node = comfy["mm"], comfy["multigpu"].LongCatMultiGPU
    lora = comfy["loading"].LongCatLoRA
    one = comfy["adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    multi = node.execute(one, 2, 60).result[0]
    # ComfyUI on the CPU attends with sub-quadratic attention, the worker with SDPA: rounding only.
    close = {"rtol": 1e-5, "atol": 1e-5}

    torch.testing.assert_close(_sample(comfy, multi), _sample(comfy, one), **close)
    pids = _runner(multi).pool.pids()
    assert len(pids) == 1 and _running(pids[0])

    # A LoRA after the node: rank 0 patches its weights, the worker must get them again.
    with_lora = _sample(comfy, lora.execute(one, comfy_models["official_lora"], 0.7).result[0])
    multi_lora = lora.execute(multi, comfy_models["official_lora"], 0.7).result[0]
    got = _sample(comfy, multi_lora)
    torch.testing.assert_close(got, with_lora, **close)
    assert not torch.allclose(got, _sample(comfy, one), **close)
    assert _runner(multi_lora).pool.pids() == pids  # same worker, new weights

    # Cancel (ComfyUI's interrupt flag, checked between steps) stops the run, not the workers.
    calls = []

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
    assert _runner(multi).pool.pids() == pids
    torch.testing.assert_close(_sample(comfy, multi), _sample(comfy, one), **close)

    # A worker killed mid-step: a clear error within seconds, no process left; the next run restarts.
    hook = multi.model.diffusion_model.blocks[1].register_forward_pre_hook(
        lambda module, args: os.kill(pids[0], signal.SIGKILL))
    try:
        with pytest.raises(RuntimeError, match=f"worker rank 1 \\(cpu, pid {pids[0]}\\) was killed by signal 9"):
            _sample(comfy, multi)
    finally:
        hook.remove()
    assert _gone(pids)
    torch.testing.assert_close(_sample(comfy, multi), _sample(comfy, one), **close)
    new_pids = _runner(multi).pool.pids()
    assert new_pids and new_pids != pids

    # ComfyUI's "Unload Models" stops the workers (the runner's watch sees it within a second).
    mm.unload_all_models()
    assert _gone(new_pids)
