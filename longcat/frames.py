"""Frame ↔ latent bookkeeping of the Wan 2.1 VAE as LongCat-Video uses it, and the refine padding.

The VAE encodes the first frame alone and then groups of 4 (``T_lat = 1 + (F−1)//4``);
decoding gives ``F = 1 + 4·(T_lat−1)``. Refinement pads frames so that the conditioning and the
noise latents are each a multiple of 4 (the BSA temporal chunk; docs/pipelines.md, Pipelines).
Pure integer arithmetic; imports nothing from torch or ComfyUI.
"""

import logging
import math
from dataclasses import dataclass

logger = logging.getLogger(__name__)

VAE_TEMPORAL = 4
VAE_SPATIAL = 8
LATENT_CHANNELS = 16  # Wan 2.1 VAE latent channels
# Refinement pads latent T of the conditioning and the noise parts to multiples of this
# (the official ``bsa_latent_granularity``, equal to the temporal BSA chunk).
REFINE_LATENT_GRANULARITY = 4

# Official default sizes (height, width): stage 1 480p bucket for a 480×832 input, and the
# 720p refine bucket at context-parallel size 1 (scale 64; 768×1280 at cp 2/4, docs/pipelines.md, Frames).
STAGE1_SIZE = (480, 832)
REFINE_SIZE = (704, 1280)
# Pixel multiples: stage 1 needs latent H, W even (patch 2): 16 px. Refine needs the token grid
# divisible by the BSA chunk 4: 64 px.
STAGE1_MULTIPLE = 16
REFINE_MULTIPLE = 64


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def latent_frames(num_frames: int) -> int:
    """Latent frames of ``num_frames`` pixel frames: ``1 + (F−1)//4`` (93 → 24, 13 → 4)."""
    _check_count("num_frames", num_frames, 1)
    return 1 + (num_frames - 1) // VAE_TEMPORAL


def pixel_frames(num_latents: int) -> int:
    """Pixel frames decoded from ``num_latents`` latent frames: ``1 + 4·(T−1)`` (24 → 93)."""
    _check_count("num_latents", num_latents, 1)
    return 1 + VAE_TEMPORAL * (num_latents - 1)


def round_frames(num_frames: int) -> int:
    """Snap a frame count to ``4k + 1`` with the official formula ``F//4·4 + 1``.

    94, 95 → 93; note a multiple of 4 goes *up* by one (96 → 97), as in the official pipelines.
    """
    _check_count("num_frames", num_frames, 1)
    if (num_frames - 1) % VAE_TEMPORAL == 0:
        return num_frames
    rounded = num_frames // VAE_TEMPORAL * VAE_TEMPORAL + 1
    logger.warning("num_frames %d is not 4k+1; using %d", num_frames, rounded)
    return rounded


# The official continuation demo resamples its input to this frame rate (every ``stride``-th
# frame) before taking the conditioning frames; 480p outputs are written at it too.
STAGE1_FPS = 15.0


def fps_stride(source_fps: float, target_fps: float = STAGE1_FPS) -> int:
    """Keep every ``stride``-th frame of a ``source_fps`` video to get about ``target_fps``: the
    official ``max(1, round(source_fps / target_fps))`` (30 → 2, 24 → 2, 60 → 4, 15 or less → 1)."""
    for name, value in (("source fps", source_fps), ("target fps", target_fps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    return max(1, round(source_fps / target_fps))


def latent_shape(num_latents: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
    """``(B, 16, T, H/8, W/8)``: the Wan 2.1 latent of ``num_latents`` frames at ``height`` x ``width`` pixels."""
    return (batch, LATENT_CHANNELS, num_latents, height // VAE_SPATIAL, width // VAE_SPATIAL)


def check_size(height: int, width: int, multiple: int = STAGE1_MULTIPLE) -> tuple[int, int]:
    """Validate a pixel size; returns ``(height, width)`` or raises ValueError naming the value."""
    for name, value in (("height", height), ("width", width)):
        _check_count(name, value, multiple)
        if value % multiple:
            raise ValueError(f"{name} must be a multiple of {multiple}, got {value}")
    return height, width


def _ceil_to(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


@dataclass(frozen=True)
class RefinePlan:
    """Frame and latent counts of one refinement call (docs/pipelines.md, Pipelines).

    num_frames: stage-1 frames in; new_frames: frames after temporal upsampling (2× or 1×).
    num_cond_frames: conditioning frames as given (the first of the new frames);
    add_front: copies of the first frame prepended so the conditioning fills ``cond_latents``
    latents; noise_frames: ``new_frames − num_cond_frames``; noise_latents: latents of the
    noise part; add_back: copies of the last frame appended. frames_encoded and latent_frames
    describe the padded clip the VAE sees. Output frames ``[add_front, add_front + new_frames)``.
    """

    num_frames: int
    new_frames: int
    num_cond_frames: int
    add_front: int
    cond_latents: int
    noise_frames: int
    noise_latents: int
    add_back: int

    @property
    def frames_encoded(self) -> int:
        return self.add_front + self.new_frames + self.add_back

    @property
    def latent_frames(self) -> int:
        return self.cond_latents + self.noise_latents


def refine_plan(num_frames: int, num_cond_frames: int = 0, spatial_refine_only: bool = False) -> RefinePlan:
    """Padding plan for refining ``num_frames`` stage-1 frames (conditioning counted after upsampling).

    ``num_cond_frames`` are frames of the upsampled clip (26 for a 13-frame overlap at 2×).
    Example: 93 frames, 2×, no conditioning → 186 new frames, 6 appended, 48 latents.
    """
    _check_count("num_frames", num_frames, 1)
    _check_count("num_cond_frames", num_cond_frames, 0)
    new_frames = num_frames if spatial_refine_only else 2 * num_frames
    if num_cond_frames >= new_frames:
        raise ValueError(f"num_cond_frames must be < the {new_frames} upsampled frames, got {num_cond_frames}")
    g = REFINE_LATENT_GRANULARITY
    cond_latents = add_front = 0
    if num_cond_frames > 0:
        cond_latents = _ceil_to(1 + math.ceil((num_cond_frames - 1) / VAE_TEMPORAL), g)
        add_front = pixel_frames(cond_latents) - num_cond_frames
    noise_frames = new_frames - num_cond_frames
    noise_latents = _ceil_to(math.ceil(noise_frames / VAE_TEMPORAL), g)
    add_back = VAE_TEMPORAL * noise_latents - noise_frames
    return RefinePlan(num_frames, new_frames, num_cond_frames, add_front, cond_latents,
                      noise_frames, noise_latents, add_back)
