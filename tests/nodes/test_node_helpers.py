"""The nodes' helpers that need no ComfyUI: parsing, presets, step windows, the BSA plan and log,
text padding, latents."""

import math
import sys

import pytest
import torch
from longcat_pack.kernels import block_sparse_attention, choose_backend
from longcat_pack.longcat import schedules
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.options import BSA_LOG_KEY, BSA_OPTIONS_KEY
from longcat_pack.longcat.dit import LongCatVideoDiT
from longcat_pack.nodes import bsa_report, bsa_widgets, long_video_settings, sampling_inputs, text_condition, weight_dtypes


def shift_percent_to_sigma(percent, shift=12.0):
    """ComfyUI's ModelSamplingDiscreteFlow.percent_to_sigma, written out (time_snr_shift)."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return shift * t / (1 + (shift - 1) * t)


@pytest.mark.parametrize("text, expected", [
    ("", set()), ("0,1,47", {0, 1, 47}), (" 0-3 , 47", {0, 1, 2, 3, 47}), ("5,5", {5}),
])
def test_parse_dense_blocks(text, expected):
    assert bsa_widgets.parse_dense_blocks(text) == frozenset(expected)


@pytest.mark.parametrize("text", ["a", "3-1", "1;2", "-1", "1.5"])
def test_parse_dense_blocks_rejects_bad_text(text):
    with pytest.raises(ValueError, match="dense_blocks"):
        bsa_widgets.parse_dense_blocks(text)


def test_parse_chunk():
    assert bsa_widgets.parse_chunk("4,4,8", "chunk_q") == (4, 4, 8)
    assert bsa_widgets.parse_chunk("2x4x4", "chunk_k") == (2, 4, 4)
    for bad in ("4,4", "0,4,4", "a,b,c"):
        with pytest.raises(ValueError, match="chunk_q"):
            bsa_widgets.parse_chunk(bad, "chunk_q")


def test_sigma_window_converts_percent_with_the_models_shift():
    assert bsa_widgets.sigma_window(0.0, 1.0, shift_percent_to_sigma) == (math.inf, -math.inf)
    hi, lo = bsa_widgets.sigma_window(0.2, 0.6, shift_percent_to_sigma)
    assert hi == pytest.approx(shift_percent_to_sigma(0.2)) and lo == pytest.approx(shift_percent_to_sigma(0.6))
    assert hi > lo
    with pytest.raises(ValueError, match="start_percent"):
        bsa_widgets.sigma_window(0.7, 0.2, shift_percent_to_sigma)


def test_presets_and_custom_settings():
    window = (0.9, 0.1)
    refine = bsa_widgets.build_bsa_settings("refine 720p", 0.5, 0.3, "1,1,1", "1,1,1", "torch", window, "0,47")
    assert (refine.sparsity, refine.cdf_threshold, refine.chunk_3d_shape_q) == (0.9375, None, (4, 4, 4))
    assert (refine.sigma_max, refine.sigma_min, refine.dense_blocks) == (0.9, 0.1, {0, 47})
    assert refine.backend == "torch"
    base = bsa_widgets.build_bsa_settings("base 480p", 0.5, 0.0, "", "", "auto", window, "")
    assert base.sparsity == 0.875 and base.chunk_3d_shape_k == (4, 4, 4)
    custom = bsa_widgets.build_bsa_settings("custom", 0.5, 0.0, "2,4,4", "4,4,8", "auto", window, "")
    assert (custom.sparsity, custom.cdf_threshold) == (0.5, None)
    assert (custom.chunk_3d_shape_q, custom.chunk_3d_shape_k) == ((2, 4, 4), (4, 4, 8))
    assert bsa_widgets.build_bsa_settings("custom", 0.5, 0.25, "4,4,4", "4,4,4", "auto", window, "").cdf_threshold == 0.25
    with pytest.raises(ValueError, match="preset"):
        bsa_widgets.build_bsa_settings("fast", 0.5, 0.0, "4,4,4", "4,4,4", "auto", window, "")


@pytest.mark.parametrize("backend, device, dtype, path", [
    ("auto", "cuda", torch.bfloat16, "triton"), ("auto", "cuda", torch.float16, "triton"),
    ("auto", "cpu", torch.bfloat16, "torch"), ("torch", "cuda", torch.bfloat16, "torch"),
    ("triton", "cuda", torch.bfloat16, "triton"),
    # fp32 compute on CUDA: the kernel takes bf16 / fp16 only, so it runs the reference; the
    # node used to report Triton here.
    ("auto", "cuda", torch.float32, "torch"), ("triton", "cuda", torch.float32, "torch"),
])
def test_node_plan_is_the_kernels_decision(backend, device, dtype, path):
    """The BSA node's plan comes from the kernel's own decision (kernels.choose_backend) for the
    MODEL's device and compute dtype, so the report says what will run."""
    got, reason = bsa_widgets.kernel_plan(backend, device, dtype, 128)
    assert got == path and reason
    assert (got, reason.split(";")[0]) == choose_backend(backend, device, dtype, 128)
    text = bsa_widgets.describe_settings(BSASettings(backend=backend), True, device, dtype)
    assert f"Kernel: {path} (" in text


@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_node_plan_is_the_path_the_kernel_takes_on_cpu(backend, dtype, monkeypatch):
    """On a CPU-only ComfyUI the plan names the path block_sparse_attention really runs
    (backend=triton without CUDA falls back to the torch reference; it does not fail)."""
    from longcat_pack.kernels import bsa_fwd_triton

    monkeypatch.setattr(bsa_fwd_triton, "_interpreting", lambda: False)  # as in ComfyUI, not tests
    q = torch.randn(1, 1, 8, 64, dtype=dtype)
    _, report = block_sparse_attention(q, q, q, (2, 2, 2), (2, 2, 2), sparsity=0.5,
                                       chunk_3d_shape_q=(1, 2, 2), chunk_3d_shape_k=(1, 2, 2),
                                       backend=backend, return_report=True)
    path, _ = bsa_widgets.kernel_plan(backend, "cpu", dtype, 64)
    assert path == report.backend


@pytest.mark.parametrize("device, expected", [
    ("cuda", "BSA kernel: Triton"),
    ("cpu", "BSA kernel: torch reference, same results but slower (no CUDA device)"),
])
def test_startup_note_says_what_will_run(device, expected):
    """ComfyUI's start-up log names the path BSA will take, not merely whether Triton exists."""
    assert bsa_widgets.startup_kernel_note(torch.device(device)).startswith(expected)


def test_startup_note_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "longcat_pack.kernels.bsa_fwd_triton", raising=False)
    monkeypatch.delattr(sys.modules["longcat_pack.kernels"], "bsa_fwd_triton", raising=False)
    note = bsa_widgets.startup_kernel_note(torch.device("cuda"))
    assert note == "BSA kernel: torch reference, same results but slower (Triton not installed)"


def test_describe_settings_names_the_path_and_parameters():
    settings = BSASettings(sparsity=0.875, dense_blocks={3})
    text = bsa_widgets.describe_settings(settings, True, "cpu", torch.bfloat16)
    assert "0.875" in text and "torch" in text and "not CUDA" in text and "dense blocks 3" in text
    assert bsa_widgets.describe_settings(settings, False, "cuda", torch.bfloat16).startswith("BSA disabled")


def test_widget_limits_are_the_kernels_ranges():
    """The BSA node's sparsity / cdf widgets cannot hold a value the kernel refuses."""
    from longcat_pack.kernels import check_parameters

    sparsity, cdf = bsa_widgets.SPARSITY_WIDGET, bsa_widgets.CDF_WIDGET
    check_parameters(sparsity["min"], None)
    check_parameters(sparsity["max"], cdf["max"])
    with pytest.raises(ValueError, match="sparsity must be in"):
        check_parameters(sparsity["max"] + 2 * sparsity["step"], None)
    with pytest.raises(ValueError, match="cdf_threshold must be in"):
        BSASettings(cdf_threshold=cdf["max"] + cdf["step"])
    with pytest.raises(ValueError, match="chunk_3d_shape_q must be 3 positive ints"):
        BSASettings(chunk_3d_shape_q=(4, 0, 4))


def _report(seed, grid):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, math.prod(grid), 16, generator=g) for _ in range(3))
    _, report = block_sparse_attention(q, k, v, grid, grid, sparsity=0.5, chunk_3d_shape_q=(2, 2, 2),
                                       chunk_3d_shape_k=(2, 2, 2), backend="torch", return_report=True)
    return report


def test_bsa_run_log_aggregates_real_reports():
    reports = [_report(0, (4, 4, 4)), _report(1, (4, 3, 4))]  # the second grid is padded
    log = bsa_report.BSARunLog()
    assert "no block-sparse attention ran" in log.summary()
    log.record(0, reports[0])
    log.record(5, reports[1])
    kept = torch.cat([r.blocks_per_query_chunk.flatten().float() for r in reports])
    summary = log.summary()
    assert "2 sparse self-attention calls over 2 blocks" in summary
    assert f"mean {sum(r.density for r in reports) / 2:.4f}" in summary
    assert f"mean {kept.mean():.1f}, min {kept.min():.0f}, max {kept.max():.0f}" in summary
    assert "padded grids: 1 of 2" in summary
    assert f"kernel torch x2: {reports[0].reason}" in summary


def test_bsa_run_log_records_inside_a_compiled_dit_without_graph_breaks():
    """TorchCompileModel + BSA: the log's recording must not read tensors back (no sync, no graph
    break), and its summary must equal the eager run's."""
    torch.manual_seed(0)
    dit = LongCatVideoDiT(in_channels=4, out_channels=4, hidden_size=32, depth=2, num_heads=2,
                          caption_channels=16, adaln_tembed_dim=16, frequency_embedding_size=16).eval()
    x, ctx = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 6, 16)
    settings = BSASettings(sparsity=0.5, chunk_3d_shape_q=(2, 2, 2), chunk_3d_shape_k=(2, 2, 2),
                           backend="torch")

    def run(compiled):
        log = bsa_report.BSARunLog()
        opts = {BSA_OPTIONS_KEY: settings, BSA_LOG_KEY: log}

        def forward(x, t, c):
            return dit(x, t, c, transformer_options=opts)

        fn = torch.compile(forward, fullgraph=True, backend="aot_eager") if compiled else forward
        with torch.no_grad():
            fn(x, torch.tensor([500.0]), ctx)
        return log.summary()

    torch._dynamo.reset()
    eager = run(compiled=False)
    assert "2 sparse self-attention calls over 2 blocks" in eager
    assert run(compiled=True) == eager


def test_pad_text_condition_recovers_the_mask_and_pads_to_512():
    context = torch.zeros(1, 600, 8)
    context[:, :5] = torch.randn(1, 5, 8)
    padded, mask = text_condition.pad_text_condition(context)
    assert padded.shape == (1, 512, 8) and mask.shape == (1, 512)
    assert mask[0, :5].tolist() == [1.0] * 5 and mask[0, 5:].sum() == 0
    short, short_mask = text_condition.pad_text_condition(context[:, :20])
    assert torch.equal(short, padded) and torch.equal(short_mask, mask)
    with pytest.raises(ValueError, match="context"):
        text_condition.pad_text_condition(torch.zeros(512, 8))


def test_dit_sees_what_the_official_pipeline_gives_it():
    """ComfyUI's zero-padded umT5 output + recovered mask == official (states, mask) in the DiT."""
    torch.manual_seed(0)
    dit = LongCatVideoDiT(hidden_size=32, depth=1, num_heads=2, caption_channels=16,
                          adaln_tembed_dim=16, frequency_embedding_size=16).eval()
    valid = 7
    official = torch.randn(1, 512, 16)  # the encoder's states at pad positions are not zero
    official_mask = torch.zeros(1, 512)
    official_mask[:, :valid] = 1
    comfy = official.clone()
    comfy[:, valid:] = 0  # ComfyUI zeroes masked positions (zero_out_masked)
    context, mask = text_condition.pad_text_condition(comfy[:, :300])
    x = torch.randn(1, 16, 2, 4, 4)
    t = torch.tensor([500.0])
    with torch.no_grad():
        want = dit(x, t, official, official_mask)
        got = dit(x, t, context, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_start_latents():
    process_in = lambda z: z * 2.0 - 1.0  # noqa: E731  any invertible affine map
    latent = torch.zeros(1, 16, 4, 2, 2)
    latent[:, :, :1] = torch.randn(1, 16, 1, 2, 2)
    noise = torch.randn(1, 16, 4, 2, 2)
    x = sampling_inputs.start_latents(latent, noise, 1.0, 1, process_in)
    assert torch.equal(x[:, :, :1], process_in(latent[:, :, :1])) and torch.equal(x[:, :, 1:], noise[:, :, 1:])
    clean = torch.randn(1, 16, 4, 2, 2)
    half = sampling_inputs.start_latents(clean, noise, 0.25, 0, process_in)
    torch.testing.assert_close(half, 0.25 * noise + 0.75 * process_in(clean))
    empty = sampling_inputs.start_latents(torch.zeros_like(clean), noise, 0.25, 0, process_in)
    torch.testing.assert_close(empty, 0.25 * noise)
    with pytest.raises(ValueError, match="longcat_num_cond_latents"):
        sampling_inputs.start_latents(latent, noise, 1.0, 4, process_in)


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (1, 4, 1, 8, 8), (2, 16, 8, 8)])
def test_start_latents_rejects_non_video_latents(shape):
    """An SD image latent (4-D, or 4 channels) is a ValueError naming the LATENT, not a broadcast
    deep inside the latent format."""
    latent = torch.randn(shape)
    with pytest.raises(ValueError, match=r"latent must be \[B, 16, T, h, w\]"):
        sampling_inputs.start_latents(latent, torch.randn(shape), 1.0, 0, lambda z: z)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_start_latents_moves_cpu_noise_to_a_gpu_latent():
    """Under ``--gpu-only`` LATENTs live on the GPU while the sampler draws noise on the CPU."""
    process_in = lambda z: z * 2.0 - 1.0  # noqa: E731
    latent, noise = torch.randn(1, 16, 3, 2, 2), torch.randn(1, 16, 3, 2, 2)
    want = sampling_inputs.start_latents(latent, noise, 0.5, 1, process_in)
    got = sampling_inputs.start_latents(latent.cuda(), noise, 0.5, 1, process_in)
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), want)


def test_cond_latent_dict():
    cond = torch.randn(1, 16, 2, 3, 5)
    out = sampling_inputs.cond_latent_dict(cond, 6)
    assert out["samples"].shape == (1, 16, 6, 3, 5) and out[sampling_inputs.COND_LATENTS_KEY] == 2
    assert torch.equal(out["samples"][:, :, :2], cond) and out["samples"][:, :, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="length"):
        sampling_inputs.cond_latent_dict(cond, 2)


def test_schedule_sigmas_dispatch():
    assert torch.equal(sampling_inputs.schedule_sigmas("normal", 50, 0.5, 12.0), schedules.normal_sigmas(50, 12.0))
    assert torch.equal(sampling_inputs.schedule_sigmas("distill", 16, 0.5, 12.0), schedules.distill_sigmas(16, 12.0))
    assert torch.equal(sampling_inputs.schedule_sigmas("enhance_hf", 50, 0.5, 12.0), schedules.enhance_hf_sigmas(50, 12.0))
    assert torch.equal(sampling_inputs.schedule_sigmas("refine", 50, 0.5, 12.0), schedules.refine_sigmas(50, 0.5, 12.0))
    with pytest.raises(ValueError, match="mode"):
        sampling_inputs.schedule_sigmas("karras", 10, 0.5, 12.0)


def test_weight_dtype_option():
    assert weight_dtypes.weight_dtype_option("default") is None
    assert weight_dtypes.weight_dtype_option("bf16") == torch.bfloat16
    assert weight_dtypes.weight_dtype_option("fp8_e4m3fn") == torch.float8_e4m3fn
    with pytest.raises(ValueError, match="weight_dtype"):
        weight_dtypes.weight_dtype_option("int8")


def _long_video(**overrides):
    widgets = dict(num_segments=3, width=832, height=480, num_frames=93, num_cond_frames=13,
                   guidance_scale=4.0, seed=0, use_kv_cache=True, t_thresh=0.5, refine_width=1280,
                   refine_height=704)
    return long_video_settings.LongVideoSettings(**{**widgets, **overrides})


def test_long_video_memory_shapes():
    """Refinement is loaded for its own latent (704x1280, 186 frames padded to 48 latents), not
    stage 1's (480x832, 93 frames = 24 latents): ComfyUI must reserve memory for the larger one."""
    official = _long_video()
    assert official.stage1_latent_shape() == (1, 16, 24, 60, 104)
    assert official.refine_latent_shape() == (1, 16, 48, 88, 160)
    tiny = _long_video(num_segments=1, width=64, height=32, num_frames=9, num_cond_frames=5,
                       refine_width=128, refine_height=64)
    # 18 refined frames -> 5 latents, padded to 8; with 10 held frames: 4 cond + 4 noise latents
    assert tiny.stage1_latent_shape() == (1, 16, 3, 4, 8)
    assert tiny.refine_latent_shape() == (1, 16, 8, 8, 16)


def test_long_video_total_steps():
    settings = _long_video()
    assert settings.stage1_frames == 93 + 3 * 80
    # 333 stage-1 frames in windows of 93 with stride 80: 0, 80, 160, 240 -> 4 windows
    assert settings.total_steps(50, 56, None) == 50 + 3 * 56
    assert settings.total_steps(50, 56, 5) == 50 + 3 * 56 + 4 * 5


@pytest.mark.parametrize("overrides, name", [
    (dict(num_cond_frames=93), "num_cond_frames"),  # continuation needs new frames
    (dict(num_cond_frames=0), "num_cond_frames"),
    (dict(refine_width=1300), "width"),            # refinement needs multiples of 64
])
def test_long_video_settings_fail_before_stage_one(overrides, name):
    """Bad overlaps or refine sizes are a ValueError when the node starts, not after the
    text-to-video clip (or the whole stage 1) has been sampled."""
    with pytest.raises(ValueError, match=name):
        _long_video(**overrides)
