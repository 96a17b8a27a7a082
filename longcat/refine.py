"""480p → 720p refinement (official ``generate_refine``, docs/pipelines.md, Pipelines), as plain functions.

Steps: upsample the stage-1 frames (bilinear in space, then trilinear in time to 2× frames or
1× with ``spatial_refine_only``), pad per ``frames.refine_plan`` so conditioning and noise
latents are multiples of 4, encode, noise to ``t_thresh`` (``(1−t)·z + t·ε``), overwrite the
first latents with the re-encoded conditioning frames, run the 5-step refine schedule without
CFG, decode and crop the padding. The caller binds the refinement LoRA and BSA into ``dit_fn``.
No ComfyUI import.

Deviations (documented, not bit-parity): upsampling runs in fp32 on [0, 1] frames (official:
bf16 on uint8 frames); the noise comes from the ``generator`` argument (official: global RNG).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .frames import (
    REFINE_MULTIPLE,
    REFINE_SIZE,
    RefinePlan,
    check_size,
    pixel_frames,
    refine_plan,
)
from .pipelines import TextCondition, denoise, encode_checked, fit_frames, make_noise
from .schedules import refine_sigmas


@dataclass(frozen=True)
class RefineResult:
    """latent: fp32 ``[1, 16, plan.latent_frames, H/8, W/8]``; frames: decoded
    ``[plan.new_frames, H, W, 3]`` (conditioning frames included) or None without ``decode``."""

    latent: torch.Tensor
    frames: torch.Tensor | None
    plan: RefinePlan


def upsample_frames(frames: torch.Tensor, height: int, width: int, new_frames: int) -> torch.Tensor:
    """``[F, h, w, 3]`` in [0, 1] → ``[new_frames, height, width, 3]`` fp32 (docs/pipelines.md, Pipelines).

    Bilinear (align_corners=True) to (height, width) per frame, then trilinear
    (align_corners=True) to (new_frames, height, width), as the official pipeline does.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
    x = frames.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)
    x = x.permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, F, H, W]
    x = F.interpolate(x, size=(new_frames, height, width), mode="trilinear", align_corners=True)
    return x[0].permute(1, 2, 3, 0)


def pad_frames(frames: torch.Tensor, front: int, back: int) -> torch.Tensor:
    """Prepend ``front`` copies of the first frame and append ``back`` copies of the last."""
    parts = [frames[:1].expand(front, -1, -1, -1), frames, frames[-1:].expand(back, -1, -1, -1)]
    return torch.cat(parts)


def _check_refine_args(stage1_frames, cond_frames, num_cond_frames, t_thresh, sigmas):
    if stage1_frames.dim() != 4 or stage1_frames.shape[-1] != 3:
        raise ValueError(f"stage1_frames must be [F, H, W, 3], got {tuple(stage1_frames.shape)}")
    if (cond_frames is None) != (num_cond_frames == 0):
        raise ValueError(f"cond_frames and num_cond_frames go together: got cond_frames "
                         f"{'None' if cond_frames is None else tuple(cond_frames.shape)}, num_cond_frames={num_cond_frames}")
    if cond_frames is not None and (cond_frames.dim() != 4 or cond_frames.shape[0] < num_cond_frames):
        raise ValueError(f"cond_frames must be [N >= num_cond_frames={num_cond_frames}, H, W, 3], "
                         f"got {tuple(cond_frames.shape)}")
    if not 0.0 < t_thresh <= 1.0:
        raise ValueError(f"t_thresh must be in (0, 1], got {t_thresh}")
    if sigmas is not None and not math.isclose(float(sigmas[0]), t_thresh, abs_tol=1e-6):
        raise ValueError(f"sigmas must start at t_thresh={t_thresh}, got {float(sigmas[0])}")


def _cond_clip(cond_frames: torch.Tensor, plan: RefinePlan, height: int, width: int) -> torch.Tensor:
    """The conditioning clip the VAE sees: the last ``num_cond_frames`` frames, front-padded."""
    given = fit_frames(cond_frames[-plan.num_cond_frames:], height, width)
    return pad_frames(given, plan.add_front, 0)


def prepare_refine_latents(encode, stage1_frames: torch.Tensor, plan: RefinePlan, height: int, width: int,
                           t_thresh: float, cond_frames: torch.Tensor | None = None,
                           generator=None) -> torch.Tensor:
    """Upsample, pad, encode and noise to ``t_thresh``; conditioning latents first. fp32
    ``[1, 16, plan.latent_frames, H/8, W/8]`` on the encoder's device."""
    clip = upsample_frames(stage1_frames, height, width, plan.new_frames)
    clip = pad_frames(clip, plan.add_front, plan.add_back)
    z_up = encode_checked(encode, clip, plan.latent_frames, height, width)
    noise = make_noise(z_up.shape, generator, z_up.device)
    latents = (1 - t_thresh) * z_up + t_thresh * noise  # flow interpolation at σ = t_thresh
    if plan.cond_latents:
        cond = encode_checked(encode, _cond_clip(cond_frames, plan, height, width), plan.cond_latents, height, width)
        latents[:, :, :plan.cond_latents] = cond.to(latents.device)
    return latents


def refine(dit_fn, encode, decode, stage1_frames: torch.Tensor, positive: TextCondition, *,
           cond_frames: torch.Tensor | None = None, num_cond_frames: int = 0,
           height: int = REFINE_SIZE[0], width: int = REFINE_SIZE[1], t_thresh: float = 0.5,
           sigmas=None, spatial_refine_only: bool = False, generator=None, callback=None) -> RefineResult:
    """Refine stage-1 frames to (height, width) and 2× frames (or 1× with ``spatial_refine_only``).

    stage1_frames: ``[F, h0, w0, 3]`` in [0, 1]. cond_frames: an image ``[1, H, W, 3]`` or video
    ``[N, H, W, 3]`` whose last ``num_cond_frames`` frames (counted at the new frame rate; 1 for
    an image) are held clean; they are the first output frames. sigmas: default
    ``refine_sigmas(50, t_thresh)`` (5 steps at 0.5). No CFG (official). decode: latent →
    ``[F, H, W, 3]`` or None to skip decoding.
    """
    _check_refine_args(stage1_frames, cond_frames, num_cond_frames, t_thresh, sigmas)
    check_size(height, width, REFINE_MULTIPLE)
    plan = refine_plan(stage1_frames.shape[0], num_cond_frames, spatial_refine_only)
    latents = prepare_refine_latents(encode, stage1_frames, plan, height, width, t_thresh, cond_frames, generator)
    sigmas = refine_sigmas(50, t_thresh) if sigmas is None else sigmas
    latent = denoise(dit_fn, latents, sigmas, positive, None, 1.0, num_cond_latents=plan.cond_latents,
                     callback=callback)
    frames = None
    if decode is not None:
        decoded = decode(latent)
        expect = pixel_frames(plan.latent_frames)  # ≥ add_front + new_frames by construction
        if decoded.shape[0] != expect:
            raise ValueError(f"decode returned {decoded.shape[0]} frames, expected {expect}")
        frames = decoded[plan.add_front: plan.add_front + plan.new_frames]
    return RefineResult(latent=latent, frames=frames, plan=plan)
