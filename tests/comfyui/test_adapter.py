"""The ComfyUI adapter in-process against the model package: sign/timestep convention, LoRA
patches, and the sampler glue (needs ``COMFYUI_DIR`` and ComfyUI's Python packages)."""

import sys

import pytest
import torch
from longcat_pack.longcat import weights
from longcat_pack.longcat.guidance import euler_step
from longcat_pack.longcat.lora import load_lora_file, merge_lora
from longcat_pack.longcat.pipelines import (
    TextCondition,
    denoise,
    make_dit_fn,
    make_noise,
)

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy_env(comfy_models):
    """Import ComfyUI in this process on the CPU; returns the modules the tests use."""
    sys.path.insert(0, comfy_models["comfyui_dir"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # must precede comfy.model_management's device probe
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import folder_paths
    from longcat_pack.nodes import loading, model_adapter, sampling

    return {"model_adapter": model_adapter, "sampling": sampling, "loading": loading,
            "samplers": comfy.samplers, "sd": comfy.sd, "utils": comfy.utils,
            "folder_paths": folder_paths}


def _context(tokens=6, seed=0):
    context = torch.zeros(1, 512, 4096)
    context[:, :tokens] = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(seed))
    return context


def _ksampler_euler(samplers, model, noise, steps=2):
    """Stock sampling as KSampler runs it: Euler over ``steps`` even sigmas 1 → 0 (default
    1 → 0.5 → 0), cfg 1 (one DiT call per step), empty latent."""
    cond = [[_context(), {}]]
    return samplers.sample(model, noise, cond, cond, 1.0, "cpu", samplers.ksampler("euler"),
                           torch.linspace(1.0, 0.0, steps + 1), latent_image=torch.zeros_like(noise))


def _count_dit_calls(patcher) -> list:
    """A list that grows by one at every forward of the MODEL's DiT (shared by its clones)."""
    calls = []
    patcher.model.diffusion_model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_ksampler_step_is_the_official_euler_step(comfy_env, comfy_models):
    """Stock Euler (sigma 1 → 0.75 → 0) equals the official Euler steps with the DiT's own v:
    ComfyUI's denoised = x − σ·out needs out = −v and timestep σ·1000."""
    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    dit = weights.load_dit(comfy_models["dit"], torch.float32)
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(1))
    latent = torch.zeros_like(noise)
    context = _context()
    sigmas = torch.tensor([1.0, 0.75, 0.0])
    samplers = comfy_env["samplers"]
    out = samplers.sample(patcher, noise, [[context, {}]], [[context, {}]], 1.0, "cpu",
                          samplers.ksampler("euler"), sigmas, latent_image=latent)
    mask = (context != 0).any(-1).float()
    x = noise
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            v = dit(x, (sigma * 1000).reshape(1), context, mask)
            x = euler_step(x, v, sigma, sigma_next)
    torch.testing.assert_close(patcher.model.latent_format.process_in(out), x, rtol=1e-5, atol=1e-5)


def test_longcat_lora_patches_equal_the_official_merge(comfy_env, comfy_models):
    """LongCat LoRA (official file) and LoraLoaderModelOnly (ComfyUI file) give merged weights."""
    adapter, sd, utils = comfy_env["model_adapter"], comfy_env["sd"], comfy_env["utils"]
    comfy_env["folder_paths"].add_model_folder_path("loras", comfy_models["loras"])
    base = adapter.load_longcat_model(comfy_models["dit"], torch.float32)
    state = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    want = merge_lora(state, load_lora_file(comfy_models["official_lora_path"]), strength=0.7)
    node = comfy_env["loading"].LongCatLoRA
    official = node.execute(base, comfy_models["official_lora"], 0.7).result[0]
    stock, _ = sd.load_lora_for_models(
        base, None, utils.load_torch_file(comfy_models["comfy_lora_path"]), 0.7, 0)
    for patcher in (official, stock):
        patcher.patch_model()
        got = patcher.model.diffusion_model.state_dict()
        for key in ("blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.1.attn.qkv.weight"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
        patcher.unpatch_model()


def test_sampler_node_equals_the_model_package_pipeline(comfy_env, comfy_models):
    """LongCat Sampler's glue (normalization, noise, conditioning, dit_fn) adds nothing."""
    adapter, sampling = comfy_env["model_adapter"], comfy_env["sampling"]
    patcher = adapter.load_longcat_model(comfy_models["dit"], torch.float32)
    dit = weights.load_dit(comfy_models["dit"], torch.float32)
    latent_format = patcher.model.latent_format
    raw = torch.zeros(1, 16, 3, 4, 8)
    raw[:, :, :1] = torch.randn(1, 16, 1, 4, 8)
    positive, negative = _context(6, 1), _context(1, 2)
    sigmas = torch.tensor([1.0, 0.9, 0.5, 0.0])
    latent = {"samples": raw, "longcat_num_cond_latents": 1}
    got, _ = sampling.sample_latent(patcher, [[positive, {}]], [[negative, {}]], latent, sigmas,
                                    seed=9, guidance=3.0, use_kv_cache=True, offload_kv_cache="gpu")
    start = make_noise(raw.shape, torch.Generator("cpu").manual_seed(9))
    start[:, :, :1] = latent_format.process_in(raw[:, :, :1])
    cond = lambda c: TextCondition(c, (c != 0).any(-1).float())
    with torch.no_grad():
        want = denoise(make_dit_fn(dit), start, sigmas, cond(positive), cond(negative), 3.0,
                       num_cond_latents=1, use_kv_cache=True)
    torch.testing.assert_close(latent_format.process_in(got["samples"]), want, rtol=1e-5, atol=1e-5)
    assert got["longcat_num_cond_latents"] == 1


def test_torch_compile_model_wrapper_runs_our_model(comfy_env, comfy_models):
    """TorchCompileModel's wrapper (inductor; ~35 s to compile on 2 CPU cores) matches eager."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    compiled = patcher.clone()
    set_torch_compile_wrapper(model=compiled, backend="inductor")
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(2))
    samplers = comfy_env["samplers"]
    torch.testing.assert_close(_ksampler_euler(samplers, compiled, noise),
                               _ksampler_euler(samplers, patcher, noise), rtol=1e-5, atol=1e-5)


def test_easycache_skips_dit_calls_and_changes_nothing_when_it_never_skips(comfy_env, comfy_models):
    """Core's EasyCache node runs through our DiT's DIFFUSION_MODEL wrappers, as on core DiTs:
    at its highest threshold it skips DiT calls of a 10-step KSampler run; when it never skips
    (threshold 0) the result equals the run without it, bit for bit."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    calls = _count_dit_calls(patcher)
    noise = torch.randn(1, 16, 3, 4, 8, generator=torch.Generator().manual_seed(6))
    samplers = comfy_env["samplers"]

    def run(reuse_threshold=None):
        model = patcher.clone()
        if reuse_threshold is not None:
            model = EasyCacheNode.execute(model, reuse_threshold, 0.0, 1.0, False).result[0]
        calls.clear()
        return _ksampler_euler(samplers, model, noise, steps=10), len(calls)

    plain, plain_calls = run()
    never, never_calls = run(reuse_threshold=0.0)
    cached, cached_calls = run(reuse_threshold=3.0)
    assert plain_calls == never_calls == 10
    torch.testing.assert_close(never, plain, rtol=0, atol=0)
    assert 1 <= cached_calls < 10, cached_calls
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)


def test_attention_override_reaches_our_dense_attention(comfy_env, comfy_models):
    """``optimized_attention_override`` (ModelAttentionBackend and similar patches) is called
    for every dense self- and cross-attention call of every block, with ComfyUI's attention
    function as the default, and an override that calls it changes nothing."""
    import comfy.ldm.modules.attention as comfy_attention

    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    seen = []

    def override(default, *args, **kwargs):
        seen.append(default.__name__)
        return default(*args, **kwargs)

    model = patcher.clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(7))
    samplers = comfy_env["samplers"]
    got = _ksampler_euler(samplers, model, noise)
    depth = len(patcher.model.diffusion_model.blocks)
    assert seen == [comfy_attention.optimized_attention.__name__] * (2 * depth * 2)  # steps x blocks x (self, cross)
    torch.testing.assert_close(got, _ksampler_euler(samplers, patcher, noise), rtol=0, atol=0)


ATTENTION_FLAG_RUN = """
import sys, torch
comfy_dir, pack_root, dit_path, flag = sys.argv[1:5]
sys.path[:0] = [comfy_dir, pack_root]
import comfy.cli_args
comfy.cli_args.args.cpu = True
setattr(comfy.cli_args.args, flag, True)
import comfy.samplers
from _standalone import import_pack
import_pack()
from longcat_pack.nodes.model_adapter import load_longcat_model
patcher = load_longcat_model(dit_path, torch.float32)
seen = set()
def override(default, *args, **kwargs):
    seen.add(default.__name__)
    return default(*args, **kwargs)
patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
noise = torch.randn(1, 16, 2, 4, 8)
cond = [[torch.randn(1, 512, 4096), {}]]
comfy.samplers.sample(patcher, noise, cond, cond, 1.0, "cpu", comfy.samplers.ksampler("euler"),
                      torch.tensor([1.0, 0.0]), latent_image=torch.zeros_like(noise))
print(sorted(seen))
"""


@pytest.mark.parametrize("flag, function", [("use_split_cross_attention", "attention_split"),
                                            ("use_pytorch_cross_attention", "attention_pytorch")])
def test_attention_flags_choose_our_dense_attention(comfy_models, flag, function):
    """ComfyUI's attention flags (``--use-split-cross-attention``, ...) pick the function our
    dense attention runs, as for core models (a fresh process: the flags act at import)."""
    import subprocess

    from comfy_server import PACK_ROOT, comfy_python

    run = subprocess.run([comfy_python(), "-c", ATTENTION_FLAG_RUN, comfy_models["comfyui_dir"],
                          str(PACK_ROOT), comfy_models["dit"], flag],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == repr([function]), run.stdout[-2000:]


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_weight_dtype_stores_fp8_and_samples_close_to_full_precision(comfy_env, comfy_models,
                                                                        weight_dtype):
    """Loader's fp8 weight_dtype: Linear weights stay fp8 in memory, comfy.ops casts them per
    layer, and a sampling step lands near the full-precision one (fp8 rounding only)."""
    loading = comfy_env["loading"]
    dtype = loading.weight_dtype_option(weight_dtype)
    fp8 = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], dtype)
    full = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    qkv = fp8.model.diffusion_model.blocks[0].attn.qkv
    assert qkv.weight.dtype == dtype and getattr(qkv, "comfy_cast_weights", False)
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(3))
    samplers = comfy_env["samplers"]
    got, want = _ksampler_euler(samplers, fp8, noise), _ksampler_euler(samplers, full, noise)
    assert torch.isfinite(got).all()
    rel = ((got - want).norm() / want.norm()).item()
    assert 0 < rel < 0.05, rel  # fp8 changes the result (1–2 % here), but only by its rounding


def test_fast_fp8_matrix_mult_reaches_the_block_linears(comfy_env, comfy_models, monkeypatch):
    """With fp8 weights and ``--fast fp8_matrix_mult`` on an fp8-capable GPU, ComfyUI builds the
    DiT from ``comfy.ops.fp8_ops``, whose Linears try ``fp8_linear`` (fp8 matmul) only outside
    training mode: every Linear of the blocks and the caption MLP must offer it."""
    import comfy.cli_args
    import comfy.model_management
    import comfy.ops

    monkeypatch.setattr(comfy.cli_args.args, "fast", {comfy.cli_args.PerformanceFeature.Fp8MatrixMultiplication})
    monkeypatch.setattr(comfy.model_management, "supports_fp8_compute", lambda device=None: True)
    offered = set()

    def record(layer, x):  # no fp8 matmul on the CPU: record and take the cast fallback
        offered.add(layer)

    monkeypatch.setattr(comfy.ops, "fp8_linear", record)
    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float8_e4m3fn)
    dit = patcher.model.diffusion_model
    assert isinstance(dit.blocks[0].attn.qkv, comfy.ops.fp8_ops.Linear)
    _ksampler_euler(comfy_env["samplers"], patcher, torch.randn(1, 16, 2, 4, 8))
    names = {name for name, module in dit.named_modules() if module in offered}
    block_linears = {f"blocks.{i}.{p}" for i in range(len(dit.blocks)) for p in
                     ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
                      "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")}
    assert block_linears | {"y_embedder.y_proj.0", "y_embedder.y_proj.2"} <= names


def test_sampler_node_takes_an_empty_image_latent_like_ksampler(comfy_env, comfy_models):
    """An EmptyLatentImage LATENT ([1, 4, h, w] zeros) becomes one 16-channel latent frame, as
    the stock KSampler's fix_empty_latent_channels does, instead of a broadcast error."""
    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    latent = {"samples": torch.zeros(1, 4, 4, 8)}
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    got, _ = comfy_env["sampling"].sample_latent(patcher, [[_context(), {}]], None, latent, sigmas,
                                                 seed=1, guidance=1.0, use_kv_cache=False,
                                                 offload_kv_cache="gpu")
    want, _ = comfy_env["sampling"].sample_latent(
        patcher, [[_context(), {}]], None, {"samples": torch.zeros(1, 16, 1, 4, 8)}, sigmas,
        seed=1, guidance=1.0, use_kv_cache=False, offload_kv_cache="gpu")
    assert got["samples"].shape == (1, 16, 1, 4, 8)
    torch.testing.assert_close(got["samples"], want["samples"])


class _StandinVae:
    """A VAE object with ComfyUI's encode/decode signatures over the stand-in VAE (fast, exact)."""

    def encode(self, pixels):
        from longcat_pack.longcat.standin_vae import standin_encode

        return standin_encode(pixels)

    def decode(self, latent):
        from longcat_pack.longcat.standin_vae import standin_decode

        return standin_decode(latent).unsqueeze(0)  # [1, F, H, W, 3] like a video VAE


def test_refine_node_takes_rgba_cond_frames_like_rgba_frames(comfy_env, comfy_models):
    """IMAGE inputs may carry alpha: cond_frames lose it as frames do (it raised in fit_frames)."""
    from longcat_pack.nodes import refinement

    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    gen = torch.Generator().manual_seed(4)
    frames = torch.rand(5, 32, 32, 3, generator=gen)
    image = torch.rand(1, 64, 64, 4, generator=gen)
    run = lambda cond: refinement.refine_frames(
        patcher, _StandinVae(), [[_context(), {}]], frames, 64, 64, 0.5, True, 3, cond, 1)
    rgba, _, _ = run(image)
    rgb, _, _ = run(image[..., :3])
    assert rgba.shape == (5, 64, 64, 3)
    torch.testing.assert_close(rgba, rgb)


def test_rope_tables_are_freed_after_sampling(comfy_env, comfy_models):
    """The DiT caches RoPE tables on the compute device in a plain dict, which ComfyUI's model
    offload does not move (~173 MB per 720p refine grid): each run, stock KSampler or LongCat
    Sampler, drops them when it ends."""
    patcher = comfy_env["model_adapter"].load_longcat_model(comfy_models["dit"], torch.float32)
    rope = patcher.model.diffusion_model.rope
    noise = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(5))
    _ksampler_euler(comfy_env["samplers"], patcher.clone(), noise)
    assert len(rope._tables) == 0
    cond = [[_context(), {}]]
    comfy_env["sampling"].sample_latent(patcher.clone(), cond, None, {"samples": torch.zeros_like(noise)},
                                        torch.tensor([1.0, 0.5, 0.0]), seed=1, guidance=1.0,
                                        use_kv_cache=False, offload_kv_cache="gpu")
    assert len(rope._tables) == 0


def _continuation_latent():
    raw = torch.zeros(1, 16, 3, 4, 8)
    raw[:, :, :1] = torch.randn(1, 16, 1, 4, 8, generator=torch.Generator().manual_seed(3))
    return {"samples": raw, "longcat_num_cond_latents": 1}


def test_kv_cache_placement_auto_offloads_when_it_does_not_fit(comfy_env, comfy_models, monkeypatch):
    """auto: the cache stays on the device while it fits the free memory ComfyUI reports, else
    it goes to (pinned) CPU memory; the run's report says which, and the result is the same."""
    from longcat_pack.nodes import runtime

    adapter, sampling = comfy_env["model_adapter"], comfy_env["sampling"]
    patcher = adapter.load_longcat_model(comfy_models["dit"], torch.float32)
    conds = ([[_context(6, 1), {}]], [[_context(1, 2), {}]])
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    run = lambda placement: sampling.sample_latent(patcher, *conds, _continuation_latent(), sigmas, seed=1,
                                                   guidance=3.0, use_kv_cache=True,
                                                   offload_kv_cache=placement)
    kept, kept_report = run("auto")
    assert "KV cache" in kept_report and "on cpu (auto" in kept_report  # the device: CPU here
    monkeypatch.setattr(runtime, "free_memory", lambda device: 1024)
    offloaded, offloaded_report = run("auto")
    assert "pinned CPU memory" in offloaded_report and "(auto" in offloaded_report
    assert torch.equal(kept["samples"], offloaded["samples"])
    forced, forced_report = run("gpu")
    assert "on cpu (chosen)" in forced_report and torch.equal(forced["samples"], kept["samples"])


def test_memory_required_is_the_calibrated_estimate(comfy_env, comfy_models):
    """ComfyUI plans with our estimate (BSA, cache and chunking aware), not area × factor."""
    from longcat_pack.longcat import memory

    adapter = comfy_env["model_adapter"]
    patcher = adapter.load_longcat_model(comfy_models["dit"], torch.float32)
    dit = patcher.model.diffusion_model
    dims = dict(hidden=dit.hidden_size, heads=dit.num_heads, ffn_hidden=dit.blocks[0].ffn.w1.out_features,
                itemsize=4, fused=False)
    shape = [2, 16, 6, 8, 8]
    for kwargs, forward in (({}, dict(frames=6)), ({"bsa": True}, dict(frames=6, bsa=True)),
                            ({"cached_frames": 2}, dict(frames=4, cached_frames=2))):
        want = memory.forward_peak_bytes(memory.ForwardShape(batch=2, per_frame=16, **forward), **dims)
        assert patcher.model.memory_required(shape, **kwargs) == want
    assert patcher.model.memory_required(shape) != patcher.model.memory_required(shape, cached_frames=2)


def test_out_of_memory_is_one_message_naming_stage_and_fixes(comfy_env, comfy_models, monkeypatch):
    adapter, sampling = comfy_env["model_adapter"], comfy_env["sampling"]
    patcher = adapter.load_longcat_model(comfy_models["dit"], torch.float32)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.58 GiB")

    monkeypatch.setattr(patcher.model.diffusion_model, "forward", no_memory)
    with pytest.raises(torch.OutOfMemoryError) as err:
        sampling.sample_latent(patcher, [[_context(), {}]], None, _continuation_latent(),
                               torch.tensor([1.0, 0.0]), seed=1, guidance=1.0, use_kv_cache=True,
                               offload_kv_cache="gpu")
    message = str(err.value)
    assert message.startswith("LongCat Sampler (64x32, 3 latent frames, batch 1, 1 cached)")
    assert "GiB usable" in message and "offload_kv_cache to cpu" in message and "fp8" in message
    assert "\n" not in message
