"""Frame ↔ latent counts and the refine padding table (docs/pipelines.md, Pipelines)."""

import pytest
from longcat_pack.longcat.frames import (
    fps_stride,
    check_size,
    latent_frames,
    pixel_frames,
    refine_plan,
    round_frames,
)


def test_latent_pixel_counts():
    assert latent_frames(93) == 24 and latent_frames(13) == 4 and latent_frames(1) == 1
    assert pixel_frames(24) == 93 and pixel_frames(1) == 1
    assert all(pixel_frames(latent_frames(f)) == f for f in range(1, 200, 4))
    assert round_frames(93) == 93 and round_frames(94) == 93 and round_frames(95) == 93 and round_frames(2) == 1
    assert round_frames(96) == 97  # official formula F//4·4 + 1 rounds a multiple of 4 up


# (num_frames, Nc, spatial_only) → (add_front, Lc, Nn, Ln, add_back, frames encoded, latent T), docs/pipelines.md, Pipelines
TABLE = [
    ((93, 0, False), (0, 0, 186, 48, 6, 192, 48)),    # t2v refine 2×
    ((93, 1, False), (12, 4, 185, 48, 7, 205, 52)),   # i2v refine 2× (image)
    ((93, 26, False), (3, 8, 160, 40, 0, 189, 48)),   # vc / long-video refine 2×
    ((93, 0, True), (0, 0, 93, 24, 3, 96, 24)),       # t2v spatial_refine_only
    ((93, 13, True), (0, 4, 80, 20, 0, 93, 24)),      # vc spatial_refine_only
]


@pytest.mark.parametrize("args, expect", TABLE)
def test_refine_padding_table(args, expect):
    p = refine_plan(args[0], args[1], spatial_refine_only=args[2])
    got = (p.add_front, p.cond_latents, p.noise_frames, p.noise_latents, p.add_back, p.frames_encoded, p.latent_frames)
    assert got == expect
    # The padded clip encodes to exactly the planned latents; both parts are multiples of 4.
    assert latent_frames(p.frames_encoded) == p.latent_frames
    assert p.cond_latents % 4 == 0 and p.noise_latents % 4 == 0


def test_tokens_of_t2v_refine():
    p = refine_plan(93)
    assert p.latent_frames * (704 // 16) * (1280 // 16) == 168_960


def test_bad_values():
    for call in (lambda: latent_frames(0), lambda: pixel_frames(0), lambda: refine_plan(5, 10),
                 lambda: refine_plan(5, -1), lambda: check_size(480, 830), lambda: check_size(0, 832)):
        with pytest.raises(ValueError):
            call()
    assert check_size(704, 1280, 64) == (704, 1280)


@pytest.mark.parametrize("source, stride", [(30.0, 2), (29.97, 2), (24.0, 2), (25.0, 2), (60.0, 4),
                                            (15.0, 1), (10.0, 1), (45.0, 3), (50.0, 3)])
def test_fps_stride_is_the_official_resampling(source, stride):
    """The official continuation demo keeps video[::max(1, round(fps / 15))]."""
    assert fps_stride(source) == stride == max(1, round(source / 15))
    assert fps_stride(source, 30.0) == max(1, round(source / 30))


@pytest.mark.parametrize("bad", [0, -15.0, float("nan"), float("inf"), True, "30", None])
def test_fps_stride_rejects_bad_rates(bad):
    with pytest.raises(ValueError, match="fps must be a positive number"):
        fps_stride(bad)
    with pytest.raises(ValueError, match="target fps must be a positive number"):
        fps_stride(30.0, bad)
