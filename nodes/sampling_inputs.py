"""What the sampler nodes compute before the DiT runs: the sigma schedule, the start latents,
and LATENTs that carry conditioning frames (``COND_LATENTS_KEY``).

Imports no ComfyUI (the CPU tests cover it without a ComfyUI tree).
"""

import torch

from ..longcat import schedules
from ..longcat.frames import LATENT_CHANNELS

# Key under which a LATENT carries how many leading latent frames are clean conditioning.
COND_LATENTS_KEY = "longcat_num_cond_latents"


SCHEDULES = ("normal", "distill", "enhance_hf", "refine")


def schedule_sigmas(mode: str, steps: int, t_thresh: float, shift: float) -> torch.Tensor:
    """The official sigma list (terminal 0 included) for the Scheduler node's ``mode``."""
    if mode == "normal":
        return schedules.normal_sigmas(steps, shift)
    if mode == "distill":
        return schedules.distill_sigmas(steps, shift)
    if mode == "enhance_hf":
        return schedules.enhance_hf_sigmas(steps, shift)
    if mode == "refine":
        return schedules.refine_sigmas(steps, t_thresh, shift)
    raise ValueError(f"mode must be one of {SCHEDULES}, got {mode!r}")


def start_latents(latent: torch.Tensor, noise: torch.Tensor, sigma: float, num_cond: int,
                  process_in) -> torch.Tensor:
    """Normalized start point of a run: clean cond frames, then ``σ·noise + (1−σ)·x0``.

    latent: raw LATENT samples ``[B, 16, T, h, w]`` (cond frames first); noise: same shape, on
    any device (drawn on the CPU; moved to ``latent``'s device, which is the GPU for LATENTs made
    under ``--gpu-only``). An all-zero (empty) noise part counts as x0 = 0, as ComfyUI treats
    empty latents; at sigma = 1 the noise part is exactly the noise. process_in: the latent
    format's normalizer. Returns ``[B, 16, T, h, w]`` on ``latent``'s device.
    """
    if latent.ndim != 5 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"latent must be [B, {LATENT_CHANNELS}, T, h, w] (a Wan 2.1 video latent, "
                         f"e.g. EmptyHunyuanLatentVideo), got {tuple(latent.shape)}")
    if latent.shape != noise.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match latent {tuple(latent.shape)}")
    noise = noise.to(latent.device)
    if not 0 <= num_cond < latent.shape[2]:
        raise ValueError(f"{COND_LATENTS_KEY} must be in [0, T={latent.shape[2]}), got {num_cond}")
    cond, rest = latent[:, :, :num_cond], latent[:, :, num_cond:]
    x0 = process_in(rest) if torch.count_nonzero(rest) > 0 else torch.zeros_like(rest)
    noised = sigma * noise[:, :, num_cond:] + (1.0 - sigma) * x0 if sigma < 1.0 else noise[:, :, num_cond:]
    return torch.cat([process_in(cond), noised.to(cond.dtype)], dim=2)


def cond_latent_dict(cond_raw: torch.Tensor, total_latents: int) -> dict:
    """LATENT with ``cond_raw`` ``[1, 16, Tc, h, w]`` (raw VAE latents) in front of empty frames."""
    if cond_raw.ndim != 5:
        raise ValueError(f"conditioning latents must be [1, 16, Tc, h, w], got {tuple(cond_raw.shape)}")
    tc = cond_raw.shape[2]
    if not 0 < tc < total_latents:
        raise ValueError(f"length gives {total_latents} latent frames; it must exceed the {tc} "
                         f"conditioning latent frames")
    samples = torch.zeros(cond_raw.shape[:2] + (total_latents,) + cond_raw.shape[3:],
                          dtype=torch.float32, device=cond_raw.device)
    samples[:, :, :tc] = cond_raw.float()
    return {"samples": samples, COND_LATENTS_KEY: tc}
