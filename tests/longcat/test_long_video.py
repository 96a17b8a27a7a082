"""Long video: segment count, per-segment prompts, frame bookkeeping, refinement windows."""

import itertools

import pytest
import torch
from longcat_pack.longcat.long_video import (
    generate_long_video,
    long_video,
    refine_long_video,
    refine_windows,
    segment_prompts,
)
from longcat_pack.longcat.pipelines import TextCondition
from longcat_pack.longcat.schedules import normal_sigmas
from longcat_pack.longcat.standin_vae import standin_decode, standin_encode


def _text(value):
    return TextCondition(torch.full((1, 4, 8), float(value)))


class PromptRecorder:
    """Fake DiT (v = 0) recording the positive prompt's value of each denoising call."""

    def __init__(self):
        self.prompts, self.shapes = [], []

    def __call__(self, x, timestep, context, context_mask=None, num_cond_latents=0, kv_cache=None,
                 return_kv=False, **kwargs):
        if return_kv:
            return torch.zeros_like(x), {}
        self.prompts.append(float(context[-1].mean()))  # last item = cond under CFG
        self.shapes.append(tuple(x.shape))
        return torch.zeros_like(x)


def test_refine_windows_official_counts():
    windows = refine_windows(93 + 11 * 80)
    assert len(windows) == 12 and windows[0] == (0, 93) and windows[-1] == (880, 973)
    assert all(b[0] - a[0] == 80 for a, b in itertools.pairwise(windows))
    assert refine_windows(93) == [(0, 93)]
    assert refine_windows(100) == [(0, 93), (80, 100)]
    with pytest.raises(ValueError):
        refine_windows(100, window=13, num_cond_frames=13)


def test_segment_prompts():
    a, b = _text(1), _text(2)
    assert segment_prompts([a], 3) == [a] * 4
    assert segment_prompts([a, b], None) == [a, b]
    with pytest.raises(ValueError, match="num_segments"):
        segment_prompts([a, b], 3)


def test_stage1_segments_prompts_and_frames():
    fake = PromptRecorder()
    prompts = [_text(i) for i in range(1, 4)]  # t2v + 2 segments (interactive demo)
    frames = generate_long_video(fake, standin_encode, standin_decode, prompts, _text(0), height=16, width=16,
                                 num_frames=9, num_cond_frames=5, t2v_sigmas=normal_sigmas(2),
                                 vc_sigmas=normal_sigmas(3), generator=torch.Generator().manual_seed(0))
    assert frames.shape == (9 + 2 * 4, 16, 16, 3)
    assert fake.prompts == [1.0] * 2 + [2.0] * 3 + [3.0] * 3
    assert fake.shapes[0] == (2, 16, 3, 2, 2) and fake.shapes[2] == (2, 16, 1, 2, 2)  # KV cache: noise frames only


def test_refine_long_video_windows_and_conditioning():
    calls = []

    def dit(x, timestep, context, context_mask=None, num_cond_latents=0, **kwargs):
        calls.append((x.shape[2], num_cond_latents))
        return torch.zeros_like(x)

    stage1 = torch.rand(9 + 2 * 4, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    out = refine_long_video(dit, standin_encode, standin_decode, stage1, _text(0), window=9, num_cond_frames=5,
                            height=64, width=64, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2 * stage1.shape[0], 64, 64, 3)
    per_window = [calls[i] for i in range(0, len(calls), 5)]  # 5 refine steps per window
    # Window 0: 18 new frames, no cond → 8 latents; later: 10 cond frames (2·5) → Lc 4 + Ln 4.
    assert per_window == [(8, 0), (8, 4), (8, 4)]
    spatial = refine_long_video(dit, standin_encode, standin_decode, stage1, _text(0), window=9, num_cond_frames=5,
                                height=64, width=64, spatial_refine_only=True)
    assert spatial.shape == (stage1.shape[0], 64, 64, 3)


def test_long_video_end_to_end_with_refinement():
    fake = PromptRecorder()
    out = long_video(fake, standin_encode, standin_decode, [_text(1)], _text(0), refine_dit_fn=fake,
                     refine_prompt=_text(5), num_segments=1, height=16, width=16, num_frames=9, num_cond_frames=5,
                     t2v_sigmas=normal_sigmas(2), vc_sigmas=normal_sigmas(2), refine_height=64, refine_width=64)
    assert out.shape == (2 * 13, 64, 64, 3)
    assert fake.prompts[-1] == 5.0  # refinement used its own prompt
    with pytest.raises(ValueError, match="refine_prompt"):
        long_video(fake, standin_encode, standin_decode, [_text(1)], _text(0), refine_dit_fn=fake,
                   num_segments=0, height=16, width=16, num_frames=9, t2v_sigmas=normal_sigmas(2))
