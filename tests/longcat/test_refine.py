"""Refinement: upsampling, the refine padding on real calls, t_thresh noising, cond frames, BSA on a tiny DiT."""

import pytest
import torch
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.pipelines import TextCondition, make_dit_fn
from longcat_pack.longcat.refine import pad_frames, refine, upsample_frames
from longcat_pack.longcat.schedules import refine_sigmas
from longcat_pack.longcat.standin_vae import standin_decode, standin_encode
from tiny_dit import BSALog, latent_dit

SIZE = 64  # the smallest refine size (multiple of 64); stage-1 frames are 16×16
TEXT = TextCondition(torch.zeros(1, 4, 32))


class ZeroDiT:
    """v = 0: latents stay at their noised start, so the bookkeeping is visible in the output."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, timestep, context, context_mask=None, num_cond_latents=0, **kwargs):
        self.calls.append((tuple(x.shape), timestep.clone(), num_cond_latents))
        return torch.zeros_like(x, dtype=torch.float32)


class CountingEncode:
    def __init__(self):
        self.frames = []

    def __call__(self, frames):
        self.frames.append(frames.clone())
        return standin_encode(frames)


def test_upsample_bilinear_then_trilinear():
    frames = torch.rand(5, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    up = upsample_frames(frames, 16, 24, 10)
    assert up.shape == (10, 16, 24, 3)
    # align_corners=True keeps the end frames and corner pixels.
    torch.testing.assert_close(up[0, 0, 0], frames[0, 0, 0])
    torch.testing.assert_close(up[-1, -1, -1], frames[-1, -1, -1])
    same = upsample_frames(frames, 8, 8, 5)
    torch.testing.assert_close(same, frames)
    # New frame j sits at stage-1 position j·(F−1)/(F_new−1): frame 9 of 10 from 5 → position 4.
    mid = upsample_frames(frames, 8, 8, 9)
    torch.testing.assert_close(mid[1], 0.5 * (frames[0] + frames[1]))
    padded = pad_frames(frames, 2, 3)
    assert padded.shape[0] == 10 and torch.equal(padded[1], frames[0]) and torch.equal(padded[-1], frames[-1])


# (num_frames, Nc, spatial_only) → (add_front, Lc, latent T, frames encoded), docs/pipelines.md, Pipelines
ROWS = [((93, 0, False), (0, 0, 48, 192)), ((93, 1, False), (12, 4, 52, 205)),
        ((93, 26, False), (3, 8, 48, 189)), ((93, 0, True), (0, 0, 24, 96)), ((93, 13, True), (0, 4, 24, 93))]


@pytest.mark.parametrize("args, expect", ROWS)
def test_refine_padding_on_real_calls(args, expect):
    num_frames, num_cond, spatial = args
    add_front, lc, latent_t, encoded = expect
    gen = torch.Generator().manual_seed(1)
    stage1 = torch.rand(num_frames, 16, 16, 3, generator=gen)
    cond = torch.rand(max(num_cond, 1) + 2, SIZE, SIZE, 3, generator=gen) if num_cond else None
    encode, dit = CountingEncode(), ZeroDiT()
    result = refine(dit, encode, standin_decode, stage1, TEXT, cond_frames=cond, num_cond_frames=num_cond,
                    height=SIZE, width=SIZE, spatial_refine_only=spatial, generator=torch.Generator().manual_seed(7))
    assert result.latent.shape == (1, 16, latent_t, SIZE // 8, SIZE // 8)
    assert encode.frames[0].shape[0] == encoded
    new_frames = num_frames if spatial else 2 * num_frames
    assert result.frames.shape == (new_frames, SIZE, SIZE, 3)
    assert len(dit.calls) == 5  # refine_sigmas(50, 0.5)
    for shape, timestep, ncond in dit.calls:
        assert shape[2] == latent_t and ncond == lc
        assert (timestep[:, :lc] == 0).all() and (timestep[:, lc:] > 0).all()
    # Noised start (1 − t)·z + t·ε with the generator's noise; v = 0 leaves it unchanged.
    z_up = standin_encode(encode.frames[0])
    eps = torch.randn(z_up.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(result.latent[:, :, lc:], (0.5 * z_up + 0.5 * eps)[:, :, lc:])
    if num_cond:
        clip = encode.frames[1]  # the conditioning: last Nc frames, first one repeated add_front times
        assert clip.shape[0] == num_cond + add_front
        assert torch.equal(clip[add_front:], cond[-num_cond:]) and torch.equal(clip[0], cond[-num_cond])
        assert torch.equal(result.latent[:, :, :lc], standin_encode(clip))


def test_refine_output_crops_the_front_padding():
    cond = torch.rand(1, SIZE, SIZE, 3)
    result = refine(ZeroDiT(), standin_encode, standin_decode, torch.rand(9, 16, 16, 3), TEXT, cond_frames=cond,
                    num_cond_frames=1, height=SIZE, width=SIZE)
    plan = result.plan
    assert plan.add_front == 12 and result.frames.shape[0] == 18
    # The first output frame is the (re-encoded, decoded) conditioning image, not a pad copy.
    full = standin_decode(result.latent)
    assert torch.equal(result.frames, full[plan.add_front: plan.add_front + 18])


def test_refine_bad_arguments():
    frames = torch.rand(9, 16, 16, 3)
    with pytest.raises(ValueError, match="go together"):
        refine(ZeroDiT(), standin_encode, None, frames, TEXT, num_cond_frames=2, height=SIZE, width=SIZE)
    with pytest.raises(ValueError, match="start at t_thresh"):
        refine(ZeroDiT(), standin_encode, None, frames, TEXT, sigmas=refine_sigmas(50, 0.6), height=SIZE, width=SIZE)
    with pytest.raises(ValueError, match="multiple of 64"):
        refine(ZeroDiT(), standin_encode, None, frames, TEXT, height=96, width=SIZE)
    with pytest.raises(ValueError, match="num_cond_frames"):
        refine(ZeroDiT(), standin_encode, None, frames, TEXT, cond_frames=torch.rand(2, SIZE, SIZE, 3),
               num_cond_frames=3, height=SIZE, width=SIZE)


@torch.no_grad()
def test_refine_with_bsa_on_tiny_dit():
    model, log = latent_dit(), BSALog()
    opts = {"longcat_bsa": BSASettings(sparsity=0.5, backend="torch"), "longcat_bsa_log": log}
    stage1 = torch.rand(9, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    cond = torch.rand(4, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    result = refine(make_dit_fn(model, opts), standin_encode, standin_decode, stage1, TEXT, cond_frames=cond,
                    num_cond_frames=2, height=128, width=128, generator=torch.Generator().manual_seed(2))
    assert result.latent.shape == (1, 16, 8, 16, 16) and torch.isfinite(result.frames).all()
    # 5 steps × 2 blocks × (cond→cond + noise→all) BSA calls, all on the torch backend.
    assert len(log.reports) == 5 * 2 * 2 and {r.backend for _, r in log.reports} == {"torch"}
    assert all(0 < r.density <= 1 for _, r in log.reports)
