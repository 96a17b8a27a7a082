"""A stand-in for the Wan 2.1 VAE with the same frame ↔ latent bookkeeping, for tests and the demo.

Not a learned model: ``encode`` average-pools 8×8 pixels and groups frames like the causal VAE
(first frame alone, then groups of 4, a trailing partial group dropped), tiling the three colour
channels over the 16 latent channels; ``decode`` is its inverse up to the pooling (nearest 8×
upsampling, each latent frame repeated: 1 frame for the first, 4 for the others). Shapes match
the real VAE: ``[F, H, W, 3]`` in [0, 1] ↔ ``[1, 16, 1 + (F−1)//4, H/8, W/8]``.
"""

import torch
import torch.nn.functional as F

from .frames import (
    LATENT_CHANNELS,
    VAE_SPATIAL,
    VAE_TEMPORAL,
    latent_frames,
    pixel_frames,
)


def standin_encode(frames: torch.Tensor) -> torch.Tensor:
    """``[F, H, W, 3]`` in [0, 1] (H, W multiples of 8) → fp32 ``[1, 16, 1 + (F−1)//4, H/8, W/8]``."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
    n, h, w, _ = frames.shape
    if h % VAE_SPATIAL or w % VAE_SPATIAL:
        raise ValueError(f"frame size {h}x{w} must be a multiple of {VAE_SPATIAL}")
    x = frames.float().permute(0, 3, 1, 2) * 2 - 1                   # [F, 3, H, W] in [-1, 1]
    x = F.avg_pool2d(x, VAE_SPATIAL)                                  # [F, 3, h, w]
    t = latent_frames(n)
    groups = x[1:1 + VAE_TEMPORAL * (t - 1)].reshape(t - 1, VAE_TEMPORAL, *x.shape[1:]).mean(1)
    z = torch.cat([x[:1], groups])                                    # [T, 3, h, w]
    z = z[:, torch.arange(LATENT_CHANNELS, device=z.device) % 3]       # [T, 16, h, w]
    return z.permute(1, 0, 2, 3).unsqueeze(0)


def standin_decode(latent: torch.Tensor) -> torch.Tensor:
    """``[1, 16, T, h, w]`` → ``[1 + 4·(T−1), 8h, 8w, 3]`` in [0, 1] (fp32)."""
    if latent.dim() != 5 or latent.shape[:2] != (1, LATENT_CHANNELS):
        raise ValueError(f"latent must be [1, {LATENT_CHANNELS}, T, h, w], got {tuple(latent.shape)}")
    z = latent[0].float()                                             # [16, T, h, w]
    rgb = torch.stack([z[c::3].mean(0) for c in range(3)], dim=1)     # [T, 3, h, w]
    t = rgb.shape[0]
    repeats = torch.tensor([1] + [VAE_TEMPORAL] * (t - 1), device=rgb.device)
    x = rgb.repeat_interleave(repeats, dim=0)                         # [1 + 4(T−1), 3, h, w]
    assert x.shape[0] == pixel_frames(t)
    x = F.interpolate(x, scale_factor=VAE_SPATIAL, mode="nearest")
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
