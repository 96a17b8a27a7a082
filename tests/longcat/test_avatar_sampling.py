"""Avatar sampling: the three-pass guidance, the DMD schedule, continuation (1.0 latent
stitching, 1.5 overlap re-encode), cached == uncached, on a recording fake DiT and the tiny DiT."""

import pytest
import torch
from longcat_pack.longcat.avatar.sampling import (
    Reference,
    avatar_denoise,
    avatar_guidance,
    continuation_latents,
    dmd_sigmas,
    extend_segment,
    resize_masks,
)
from longcat_pack.longcat.pipelines import TextCondition, make_dit_fn
from longcat_pack.longcat.schedules import normal_sigmas
from tiny_avatar import avatar_inputs, speaker_masks, tiny_avatar


def test_guidance_formula():
    c, ut, u = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([0.5])
    # u + s_t (c - u_t) + s_a (u_t - u) = 0.5 + 4·1 + 3·1.5
    assert avatar_guidance(c, ut, u, 4.0, 3.0).item() == pytest.approx(9.0)
    assert torch.equal(avatar_guidance(c, ut, u, 1.0, 1.0), c)  # both 1: the conditional output


def test_dmd_sigmas_are_the_documented_grid():
    t = dmd_sigmas(shift=7.0)[:-1] * 1000
    want = [1000, 979.98, 954.49, 920.94, 874.78, 807.28, 699.16, 497.99]
    assert t.tolist() == pytest.approx(want, abs=0.01)
    assert (dmd_sigmas(12.0)[-2] * 1000).item() == pytest.approx(629.71, abs=0.01)
    assert dmd_sigmas().numel() == 9 and dmd_sigmas()[-1] == 0


class Recorder:
    """A fake dit_fn: records (batch, text rows, audio is zero) per call; output depends on both."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, timestep, context, mask=None, audio=None, return_kv=False, **kw):
        if return_kv:
            self.calls.append("cache")
            return x, {}
        self.calls.append((x.shape[0], context[:, 0, 0].tolist(), bool(audio.abs().sum() == 0)))
        return x * 0 + context[:, 0, 0].view(-1, 1, 1, 1, 1) + (0 if audio.abs().sum() == 0 else 10)


def _texts():
    pos = TextCondition(torch.full((1, 3, 4), 2.0))
    neg = TextCondition(torch.full((1, 3, 4), 1.0))
    return pos, neg


def test_three_passes_per_step_with_the_right_text_and_audio():
    pos, neg = _texts()
    fake = Recorder()
    latents = torch.zeros(1, 4, 2, 2, 2)
    audio = torch.ones(1, 5, 5, 3, 8)
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    out = avatar_denoise(fake, latents, sigmas, pos, audio, neg, text_scale=4.0, audio_scale=3.0)
    # per step: [neg, pos] with audio, then neg with zero audio
    assert fake.calls == [(2, [1.0, 2.0], False), (1, [1.0], True)] * 2
    v = 1 + 4.0 * (12 - 11) + 3.0 * (11 - 1)  # u=1 (neg, no audio), u_t=11, c=12
    assert torch.allclose(out, torch.full_like(out, v * 1.0))  # Σ (σ−σ') v over the two steps = v
    fake.calls.clear()
    avatar_denoise(fake, latents, sigmas, pos, audio, None, text_scale=1.0, audio_scale=1.0)
    assert fake.calls == [(1, [2.0], False)] * 2  # DMD / scale 1: one conditional pass


def test_multi_speaker_guidance_splits_the_text_pass():
    pos, neg = _texts()
    fake = Recorder()
    avatar_denoise(fake, torch.zeros(1, 4, 2, 2, 2), torch.tensor([1.0, 0.0]), pos, torch.ones(2, 5, 5, 3, 8), neg,
                   speaker_masks=speaker_masks(3), num_cond_latents=1)
    assert fake.calls == [(1, [1.0], False), (1, [2.0], False), (1, [1.0], True)]


@pytest.mark.parametrize("streams", [1, 2])
def test_cached_continuation_sampling_equals_uncached(streams):
    model = tiny_avatar(seed=6)
    dit_fn = make_dit_fn(model)
    x, ctx, mask, audio = avatar_inputs(7, 1, 8, video_frames=29, streams=streams)
    pos = TextCondition(ctx, mask)
    neg = TextCondition(torch.zeros_like(ctx), mask)
    ref = Reference(torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), index=6,
                    mask_frame_range=1)
    kw = dict(negative=neg, num_cond_latents=4, reference=ref, speaker_masks=speaker_masks(3) if streams == 2 else None)
    sigmas = normal_sigmas(3)
    with torch.no_grad():
        cached = avatar_denoise(dit_fn, x, sigmas, pos, audio, use_kv_cache=True, **kw)
        plain = avatar_denoise(dit_fn, x, sigmas, pos, audio, use_kv_cache=False, **kw)
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=0)
    assert torch.equal(cached[:, :, :4], x[:, :, :4])  # condition latents held


def test_continuation_condition_per_version():
    previous = torch.randn(1, 4, 8, 2, 2)
    overlap = torch.randn(1, 4, 4, 2, 2)
    noise = torch.randn(1, 4, 8, 2, 2)
    stitched = continuation_latents(previous, overlap, "1.0", noise)
    assert torch.equal(stitched[:, :, :4], previous[:, :, -4:]) and torch.equal(stitched[:, :, 4:], noise[:, :, 4:])
    assert torch.equal(continuation_latents(previous, overlap, "1.5", noise)[:, :, :4], overlap)


def test_extend_segment_reencodes_the_overlap_into_the_output():
    pos, neg = _texts()
    fake = Recorder()
    seen = []

    def encode(frames):
        seen.append(frames.shape[0])
        return torch.full((1, 4, 4, 2, 2), 7.0)

    frames = torch.rand(20, 16, 16, 3)
    out = extend_segment(fake, encode, frames, torch.zeros(1, 4, 8, 2, 2), Reference(torch.zeros(1, 4, 1, 2, 2)),
                         pos, torch.ones(1, 29, 5, 3, 8), "1.0", torch.tensor([1.0, 0.0]), neg,
                         generator=torch.Generator().manual_seed(0))
    assert seen == [13] and out.shape == (1, 4, 8, 2, 2)
    assert torch.equal(out[:, :, :4], torch.full((1, 4, 4, 2, 2), 7.0))
    assert fake.calls[0] == "cache"


def test_masks_follow_the_image_fit():
    masks = torch.zeros(1, 10, 40)
    masks[0, :, :20] = 1  # left half of a wide image
    out = resize_masks(masks, 16, 16)  # cover to 16x64, centre crop 16x16: columns 24..39 of the resized
    assert out.shape == (1, 16, 16)
    assert out[0, :, :7].min() > 0.99 and out[0, :, 9:].max() < 0.01
