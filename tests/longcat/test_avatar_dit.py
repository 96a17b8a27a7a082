"""The Avatar DiT against independent statements of its math (no official outputs needed)."""

import pytest
import torch
import torch.nn.functional as F
from longcat_pack.longcat.avatar.dit import AvatarPlan, LongCatAvatarDiT
from tiny_avatar import avatar_inputs, speaker_masks, tiny_avatar


def test_published_sizes_have_the_official_tensor_and_parameter_counts():
    for layers, channels, params in ((12, 768, 15_871_660_096), (5, 1280, 15_852_916_800)):
        state = LongCatAvatarDiT(audio_block=layers, audio_channel=channels, device="meta").state_dict()
        assert len(state) == 1608
        assert sum(v.numel() for v in state.values()) == params
    assert "blocks.0.pre_audio_crs_attn_norm.weight" in LongCatAvatarDiT(
        depth=1, hidden_size=64, num_heads=2, audio_prenorm=True, device="meta").state_dict()


def _allowed(frames_q, frames_k, hw, rule):
    fq = torch.arange(frames_q * hw) // hw
    fk = torch.arange(frames_k * hw) // hw
    return rule(fq[:, None], fk[None, :])


@pytest.mark.parametrize("skip", [None, (1, 4), (0, 2)])
def test_self_attention_reference_rules_equal_a_masked_dense_attention(skip):
    """[ref | 4 cond | 4 noise]: the reference sees itself, the condition frames see themselves,
    noise frames see everything except that those in ``skip`` do not see the reference."""
    model = tiny_avatar()
    attn = model.blocks[0].attn
    hw, t, tc = 4, 9, 5
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, t * hw, 32, generator=gen) for _ in range(3))
    plan = AvatarPlan(grid=(t, 2, 2), rope=None, cond_frames=tc, ref_frames=1, ref_skip=skip)
    out = attn._attend(q, k, v, plan, {}, tc * hw, None, [])

    def rule(fq, fk):
        noise = fq >= tc
        skipped = noise & (fq - tc >= (skip or (0, 0))[0]) & (fq - tc < (skip or (0, 0))[1])
        return ((fq == 0) & (fk == 0)) | ((fq >= 1) & (fq < tc) & (fk >= 1) & (fk < tc)) | (noise & ~(skipped & (fk == 0)))

    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_allowed(t, t, hw, rule))
    torch.testing.assert_close(out, want.transpose(1, 2).flatten(2), atol=1e-6, rtol=0)

    # Cached: the queries are the noise frames only, the keys [ref | cond | noise].
    cached = AvatarPlan(grid=(4, 2, 2), rope=None, cached_frames=tc, ref_frames=1, ref_skip=skip)
    out = attn._attend(q[:, :, tc * hw:], k, v, cached, {}, 0, None, [])
    torch.testing.assert_close(out, want[:, :, tc * hw:].transpose(1, 2).flatten(2), atol=1e-6, rtol=0)


def test_projector_windowing_takes_the_documented_audio_frames():
    """Latent 0: video frame 0's whole window; latent j: frame 4j−3's window positions 0..2, the
    centres of frames 4j−2 and 4j−1, frame 4j's positions 2..4."""
    proj = tiny_avatar().audio_proj
    windows = torch.randn(1, 9, 5, 3, 8, generator=torch.Generator().manual_seed(2))
    picks = {1: [(1, 0), (1, 1), (1, 2), (2, 2), (3, 2), (4, 2), (4, 3), (4, 4)],
             2: [(5, 0), (5, 1), (5, 2), (6, 2), (7, 2), (8, 2), (8, 3), (8, 4)]}
    first = F.relu(proj.proj1(windows[0, 0].flatten()))
    later = [F.relu(proj.proj1_vf(torch.stack([windows[0, f, w] for f, w in picks[j]]).flatten())) for j in (1, 2)]
    hidden = F.relu(proj.proj2(torch.stack([first, *later])))
    want = proj.norm(proj.proj3(hidden).view(3, 4, 16))
    with torch.no_grad():
        torch.testing.assert_close(proj(windows)[0], want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("streams", [1, 2])
def test_cached_continuation_equals_uncached(streams):
    model = tiny_avatar(seed=3)
    x, ctx, mask, audio = avatar_inputs(4, 1, 9, video_frames=29, streams=streams)
    masks = speaker_masks(3) if streams == 2 else None
    kw = dict(ref_frames=1, ref_index=6, mask_frame_range=1, speaker_masks=masks, audio=audio)
    t = torch.full((1, 9), 500.0)
    with torch.no_grad():
        full = model(x, t, ctx, mask, num_cond_latents=5, **kw)
        cache = model.build_kv_cache(x[:, :, :5], ref_frames=1, ref_index=6)
        cached = model(x[:, :, 5:], t[:, 5:], ctx, mask, num_cond_latents=5, kv_cache=cache, **kw)
    torch.testing.assert_close(cached, full[:, :, 5:], atol=1e-5, rtol=0)


def test_audio_drives_noise_frames_only():
    model = tiny_avatar(seed=4)
    x, ctx, mask, audio = avatar_inputs(5, 1, 6)
    with torch.no_grad():
        a = model(x, torch.tensor([500.0]), ctx, mask, num_cond_latents=1, audio=audio)
        b = model(x, torch.tensor([500.0]), ctx, mask, num_cond_latents=1, audio=torch.zeros_like(audio))
    assert torch.equal(a[:, :, :1], b[:, :, :1])
    assert (a[:, :, 1:] - b[:, :, 1:]).abs().max() > 1e-3


def test_bad_inputs_get_one_line_errors():
    model = tiny_avatar()
    x, ctx, mask, audio = avatar_inputs(6, 1, 6)
    t = torch.tensor([500.0])
    with pytest.raises(ValueError, match="other Avatar version"):
        model(x, t, ctx, mask, audio=torch.zeros(1, 21, 5, 12, 768))
    with pytest.raises(ValueError, match="needs audio windows.*LongCat Avatar Sampler"):
        model(x, t, ctx, mask)
    with pytest.raises(ValueError, match="audio covers 3 latent frames"):
        model(x, t, ctx, mask, audio=audio[:, :9])
    two = torch.randn(2, 21, 5, 3, 8)
    empty = speaker_masks(3)
    empty[1] = 0
    with pytest.raises(ValueError, match=r"speaker mask rows \[1\] are empty"):
        model(x, t, ctx, mask, num_cond_latents=1, audio=two, speaker_masks=empty)
    with pytest.raises(ValueError, match="K = 3 for 2 audio streams"):
        model(x, t, ctx, mask, num_cond_latents=1, audio=two, speaker_masks=speaker_masks(4))
    with pytest.raises(ValueError, match="need batch 1 and condition frames"):
        model(x, t, ctx, mask, audio=two, speaker_masks=speaker_masks(3))
    with pytest.raises(ValueError, match="ref_index"):
        model(x, t, ctx, mask, num_cond_latents=2, audio=audio, ref_frames=1)


@pytest.mark.parametrize("name", ["avc_6_1_s2_cached", "avc_6_1_s1", "multi3_ai2v"])
def test_fused_block_kernels_equal_the_torch_path(monkeypatch, name):
    """The GPU path (fused LayerNorm/modulate, q/k RMSNorm + RoPE, gated residual kernels; here in
    the Triton interpreter) on the Avatar blocks, whose audio branch works on token slices."""
    from longcat_pack.kernels import block_triton
    from longcat_pack.longcat.block_kernels import FusedBlockKernels
    from tiny_avatar import avatar_cases, run_ours

    launches = []
    kernel = block_triton.gated_residual_
    monkeypatch.setattr(block_triton, "gated_residual_", lambda *a: launches.append(1) or kernel(*a))
    case = avatar_cases()[name]
    with torch.no_grad():
        want = run_ours(tiny_avatar(seed=7), case)
        got = run_ours(tiny_avatar(seed=7, block_kernels=FusedBlockKernels(cpu_interpreter=True)), case)
    assert launches  # the fused kernels ran
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
