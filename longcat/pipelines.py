"""LongCat-Video sampling pipelines as plain functions: the denoise loop, t2v, i2v, continuation.

Callers supply ``dit_fn`` (the DiT forward with ``transformer_options`` bound, see
``make_dit_fn``), ``encode(frames [F, H, W, 3] in [0, 1]) → normalized latent [1, 16, T, h, w]``
(the caller's VAE, its posterior sampling included), and ``TextCondition``s. Schedules come
from ``schedules``, the sampling conventions from ``guidance``; this module owns only the loop.
Refinement is in ``refine.py``, long videos in ``long_video.py``. No ComfyUI import.

Deliberate deviations from the official pipelines (docs/pipelines.md, Pipelines), pinned by
``tests/longcat/test_pipelines.py`` and ``test_guidance.py``: latents stay fp32 between steps on
every path (official vc without cache keeps bf16); CFG-Zero* is per sample (official breaks for
B > 1); the caller's latents are never modified in place; noise comes from an explicit
``torch.Generator``.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .frames import STAGE1_SIZE, check_size, latent_frames, latent_shape, round_frames
from .guidance import cfg_zero_star, euler_step, predicted_x0, round_timestep_bf16
from .options import SIGMAS_KEY
from .schedules import NUM_TRAIN_TIMESTEPS, enhance_hf_sigmas, normal_sigmas

logger = logging.getLogger(__name__)

Callback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class TextCondition:
    """umT5 text conditioning: ``context`` ``[1, L, 4096]``, ``mask`` ``[1, L]`` (1 = real token) or None."""

    context: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.context.dim() != 3 or self.context.shape[0] != 1:
            raise ValueError(f"context must be [1, L, C], got {tuple(self.context.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.context.shape[:2]):
            raise ValueError(f"mask must be [1, L={self.context.shape[1]}], got {tuple(self.mask.shape)}")


def make_dit_fn(model: torch.nn.Module, transformer_options: dict | None = None):
    """Bind a ``LongCatVideoDiT`` into the ``dit_fn`` the loops call.

    Casts x and context to the model's parameter dtype (the official pipeline feeds bf16; context
    also moves to x's device) and sets ``transformer_options["sigmas"]`` to the noise frames'
    sigma (max timestep / 1000) per call, so ``BSASettings`` step windows see the current step.
    """
    dtype = next(model.parameters()).dtype

    def dit_fn(x, timestep, context, context_mask=None, **kwargs):
        opts = dict(transformer_options or {})
        opts[SIGMAS_KEY] = (timestep.float().max() / NUM_TRAIN_TIMESTEPS).reshape(1)
        context = None if context is None else context.to(device=x.device, dtype=dtype)
        return model(x.to(dtype), timestep, context, context_mask, transformer_options=opts, **kwargs)

    return dit_fn


def _batch_text(positive: TextCondition, negative: TextCondition | None, cfg: bool, batch: int):
    """Context ``[B', L, C]`` and mask ``[B', L]`` | None; CFG order is [uncond, cond] (official)."""
    if not cfg:
        return positive.context.expand(batch, -1, -1), _expand(positive.mask, batch)
    if negative is None:
        raise ValueError("negative is required when guidance_scale > 1 (official default: the empty prompt)")
    if negative.context.shape[1:] != positive.context.shape[1:]:
        raise ValueError(f"negative context {tuple(negative.context.shape)} and positive context "
                         f"{tuple(positive.context.shape)} must have the same [L, C]")
    context = torch.cat([negative.context.expand(batch, -1, -1), positive.context.expand(batch, -1, -1)])
    if positive.mask is None and negative.mask is None:
        return context, None
    ones = torch.ones(positive.context.shape[:2], dtype=torch.int64, device=positive.context.device)
    masks = [ones if c.mask is None else c.mask.to(ones.device) for c in (negative, positive)]
    return context, torch.cat([m.expand(batch, -1) for m in masks])


def _expand(mask, batch):
    return None if mask is None else mask.expand(batch, -1)


def _check_denoise_args(latents, sigmas, guidance_scale, num_cond_latents):
    if latents.dim() != 5:
        raise ValueError(f"latents must be [B, C, T, h, w], got {tuple(latents.shape)}")
    if sigmas.dim() != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must be 1-D with a terminal 0, got {sigmas.tolist()}")
    if not guidance_scale >= 1.0:
        raise ValueError(f"guidance_scale must be >= 1, got {guidance_scale}")
    if not 0 <= num_cond_latents < latents.shape[2]:
        raise ValueError(f"num_cond_latents must be in [0, T={latents.shape[2]}), got {num_cond_latents}")


def build_kv_cache(dit_fn, cond_latents: torch.Tensor, offload: bool = False) -> dict:
    """The continuation KV cache: one DiT call on the clean conditioning latents ``[B, C, Tc, h, w]``
    at t = 0 without cross-attention (docs/pipelines.md, Pipelines) → ``{block: (k, v)}``."""
    timestep = torch.zeros(cond_latents.shape[0], cond_latents.shape[2], device=cond_latents.device)
    extra = {"offload_kv_cache": True} if offload else {}
    _, cache = dit_fn(cond_latents, timestep, None, None, num_cond_latents=0, kv_cache=None,
                      return_kv=True, skip_cross_attn=True, **extra)
    return cache


def _predict(dit_fn, x, sigma, context, mask, held, cache, num_cond, guidance_scale):
    """Guided DiT output (official sign) for x ``[B, C, T, h, w]`` at ``sigma``; fp32."""
    cfg = guidance_scale > 1.0
    x_in = torch.cat([x, x]) if cfg else x
    t = round_timestep_bf16(sigma * NUM_TRAIN_TIMESTEPS)  # fp32 product, as the official timesteps
    timestep = t.to(x.device).expand(x_in.shape[0], x_in.shape[2]).clone()
    timestep[:, :held] = 0.0  # clean conditioning frames sit at t = 0
    out = dit_fn(x_in, timestep, context, mask, num_cond_latents=num_cond, kv_cache=cache,
                 return_kv=False, skip_cross_attn=False).float()
    if not cfg:
        return out
    uncond, cond = out.chunk(2)
    # Official: the scale s* covers every frame the DiT returned (cond frames too without a cache).
    return cfg_zero_star(cond, uncond, guidance_scale)


def denoise(dit_fn, latents: torch.Tensor, sigmas: torch.Tensor, positive: TextCondition,
            negative: TextCondition | None = None, guidance_scale: float = 1.0, num_cond_latents: int = 0,
            use_kv_cache: bool = False, offload_kv_cache: bool = False,
            callback: Callback | None = None) -> torch.Tensor:
    """The one sampling loop: Euler over ``sigmas`` with CFG-Zero*, conditioning frames held.

    latents: ``[B, 16, T, h, w]``, noise (σ = sigmas[0]) with the first ``num_cond_latents``
    frames holding clean conditioning latents (never stepped, timestep 0).
    sigmas: float list with terminal 0 (``schedules``). guidance_scale > 1 batches
    ``[uncond, cond]`` (``negative`` required). use_kv_cache: compute the conditioning K/V once
    (``build_kv_cache``) and feed only the noise frames (needs ``num_cond_latents > 0``).
    callback(step, total, x0_preview ``[B, 16, T, h, w]``) runs after each step and may raise
    to cancel. Returns fp32 ``[B, 16, T, h, w]`` (conditioning frames included).
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()  # read per step: keep off the GPU
    _check_denoise_args(latents, sigmas, guidance_scale, num_cond_latents)
    if use_kv_cache and num_cond_latents == 0:
        raise ValueError("use_kv_cache=True needs num_cond_latents > 0 (nothing to cache)")
    x = latents.float().clone()
    cond = x[:, :, :num_cond_latents]
    cache, held = None, num_cond_latents
    if use_kv_cache:
        cache = build_kv_cache(dit_fn, cond, offload_kv_cache)
        x, held = x[:, :, num_cond_latents:].clone(), 0
    context, mask = _batch_text(positive, negative, guidance_scale > 1.0, x.shape[0])
    total = sigmas.numel() - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = _predict(dit_fn, x, sigma, context, mask, held, cache, num_cond_latents, guidance_scale)
        noisy, v_noisy = x[:, :, held:], v[:, :, held:]
        if callback is not None:
            x0 = predicted_x0(noisy, v_noisy, sigma)
            preview = torch.cat([cond, x0], dim=2)
        x[:, :, held:] = euler_step(noisy, v_noisy, sigma, sigma_next)
        if callback is not None:
            callback(i, total, preview)
    return torch.cat([cond, x], dim=2) if cache is not None else x


def make_noise(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """fp32 standard normal noise drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else "cpu"
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return noise if device is None else noise.to(device)


def text_to_video(dit_fn, positive: TextCondition, negative: TextCondition | None = None, *,
                  height: int = STAGE1_SIZE[0], width: int = STAGE1_SIZE[1], num_frames: int = 93, sigmas=None,
                  guidance_scale: float = 4.0, generator=None, device=None, callback=None) -> torch.Tensor:
    """Text-to-video (official ``generate_t2v``) → latent ``[1, 16, 1 + (F−1)//4, H/8, W/8]``.

    sigmas: default ``normal_sigmas(50)``; distilled: ``distill_sigmas(16)`` with guidance 1.
    """
    check_size(height, width)
    shape = latent_shape(latent_frames(round_frames(num_frames)), height, width)
    latents = make_noise(shape, generator, device)
    sigmas = normal_sigmas(50) if sigmas is None else sigmas
    return denoise(dit_fn, latents, sigmas, positive, negative, guidance_scale, callback=callback)


def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[F, h, w, 3]`` → ``[F, height, width, 3]`` (bilinear, antialiased; identity if already that size).

    The official pipelines resize with diffusers' VideoProcessor; pass frames at the target size
    for exact parity.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1).to(frames.dtype)


def encode_checked(encode, frames: torch.Tensor, expect_latents: int, height: int, width: int) -> torch.Tensor:
    """``encode(frames)`` as fp32, checked to be ``[1, 16, expect_latents, height/8, width/8]``."""
    latent = encode(frames)
    want = latent_shape(expect_latents, height, width)
    if tuple(latent.shape) != want:
        raise ValueError(f"encode returned {tuple(latent.shape)} for {frames.shape[0]} frames, expected {want}")
    return latent.float()


def image_to_video(dit_fn, encode, image: torch.Tensor, positive: TextCondition,
                   negative: TextCondition | None = None, *, height: int = STAGE1_SIZE[0],
                   width: int = STAGE1_SIZE[1], num_frames: int = 93, sigmas=None, guidance_scale: float = 4.0,
                   generator=None, device=None, callback=None) -> torch.Tensor:
    """Image-to-video (official ``generate_i2v``): the image is latent frame 0, held at t = 0.

    image: ``[H, W, 3]`` or ``[1, H, W, 3]`` in [0, 1]. Returns ``[1, 16, T, H/8, W/8]``.
    """
    check_size(height, width)
    image = image.unsqueeze(0) if image.dim() == 3 else image
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be [H, W, 3] or [1, H, W, 3], got {tuple(image.shape)}")
    shape = latent_shape(latent_frames(round_frames(num_frames)), height, width)
    latents = make_noise(shape, generator, device)  # official RNG order: noise, then the posterior
    latents[:, :, :1] = encode_checked(encode, fit_frames(image, height, width), 1, height, width).to(latents.device)
    sigmas = normal_sigmas(50) if sigmas is None else sigmas
    return denoise(dit_fn, latents, sigmas, positive, negative, guidance_scale, num_cond_latents=1,
                   callback=callback)


def continue_video(dit_fn, encode, video: torch.Tensor, positive: TextCondition,
                   negative: TextCondition | None = None, *, num_frames: int = 93, num_cond_frames: int = 13,
                   height: int | None = None, width: int | None = None, sigmas=None,
                   guidance_scale: float = 4.0, use_kv_cache: bool = True, offload_kv_cache: bool = False,
                   generator=None, device=None, callback=None) -> torch.Tensor:
    """Video continuation (official ``generate_vc``): the last ``num_cond_frames`` of ``video`` condition.

    video: ``[F, H, W, 3]`` in [0, 1]; height/width default to the video's size.
    sigmas: default ``enhance_hf_sigmas(50)`` (official ``enhance_hf=True``, 56 steps); use
    ``normal_sigmas`` or ``distill_sigmas`` to turn it off. Returns ``[1, 16, T, H/8, W/8]`` with
    the ``1 + (num_cond_frames−1)//4`` conditioning latents first (decode and drop the first
    ``num_cond_frames`` frames for the new ones).
    """
    if video.dim() != 4 or video.shape[0] < num_cond_frames:
        raise ValueError(f"video must be [F >= num_cond_frames={num_cond_frames}, H, W, 3], got {tuple(video.shape)}")
    height = video.shape[1] if height is None else height
    width = video.shape[2] if width is None else width
    check_size(height, width)
    num_frames = round_frames(num_frames)
    if not 1 <= num_cond_frames < num_frames:
        raise ValueError(f"num_cond_frames must be in [1, num_frames={num_frames}), got {num_cond_frames}")
    shape = latent_shape(latent_frames(num_frames), height, width)
    num_cond = latent_frames(num_cond_frames)
    latents = make_noise(shape, generator, device)
    cond_frames = fit_frames(video[-num_cond_frames:], height, width)
    latents[:, :, :num_cond] = encode_checked(encode, cond_frames, num_cond, height, width).to(latents.device)
    sigmas = enhance_hf_sigmas(50) if sigmas is None else sigmas
    return denoise(dit_fn, latents, sigmas, positive, negative, guidance_scale, num_cond_latents=num_cond,
                   use_kv_cache=use_kv_cache, offload_kv_cache=offload_kv_cache, callback=callback)
