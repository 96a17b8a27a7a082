"""Avatar sampling as plain functions over ``dit_fn``: the three-pass audio guidance loop, the
first segment (audio + text, optionally an image) and the continuation of a long video.

Conventions as the base pipelines (``longcat/pipelines.py``): ``dit_fn`` is the DiT forward with
its transformer options bound, ``encode(frames [F, H, W, 3] in [0, 1])`` → normalized latent
``[1, 16, T, h, w]``, text as ``TextCondition``, ``callback(step, total, x0_preview)`` may raise
to cancel. Audio is the clip's windows ``[A, F, 5, L, C]`` (``AvatarAudioEmbeds.segment``).
Deviations from the official pipeline, as in the base: latents stay fp32 between steps (the
official continuation draws its noise in bf16), noise comes from an explicit generator, the
caller's latents are never modified in place. No ComfyUI import.
"""

from dataclasses import dataclass

import torch

from ..guidance import euler_step, predicted_x0, round_timestep_bf16
from ..pipelines import Callback, TextCondition, _batch_text, make_noise
from ..schedules import NUM_TRAIN_TIMESTEPS, SHIFT, _with_terminal_zero, shift_sigmas

DMD_STEPS = 8
OVERLAP_FRAMES = 13  # video frames a continuation segment shares with the previous one
COND_LATENTS = 1 + (OVERLAP_FRAMES - 1) // 4


def avatar_guidance(cond: torch.Tensor, uncond_text: torch.Tensor, uncond: torch.Tensor,
                    text_scale: float, audio_scale: float) -> torch.Tensor:
    """``v = u + s_t·(c − u_t) + s_a·(u_t − u)`` in fp32: c = (text, audio), u_t = (negative
    text, audio), u = (negative text, zero audio features). No CFG-Zero*."""
    cond, uncond_text, uncond = cond.float(), uncond_text.float(), uncond.float()
    return uncond + text_scale * (cond - uncond_text) + audio_scale * (uncond_text - uncond)


def dmd_sigmas(shift: float = SHIFT) -> torch.Tensor:
    """The 1.5 DMD LoRA schedule: ``1 − 125·i/999`` for i = 0..7, shifted, + terminal 0, ``[9]``."""
    base = torch.tensor([1.0 - 125.0 * i / 999.0 for i in range(DMD_STEPS)], dtype=torch.float32)
    return _with_terminal_zero(shift_sigmas(base, shift))


@dataclass(frozen=True)
class Reference:
    """The continuation's reference latent ``[1, 16, 1, h, w]`` (the first segment's latent 0,
    fixed for the whole video), its RoPE time position and the skip range around it."""

    latent: torch.Tensor
    index: int = 10
    mask_frame_range: int = 3


def _uses_guidance(text_scale: float, audio_scale: float) -> bool:
    return text_scale > 1.0 or audio_scale > 1.0


def _predict(dit_fn, x, sigma, texts, audio, held, extra, text_scale, audio_scale, multi):
    """Guided output (official sign, fp32) for x ``[B, C, T, h, w]`` at ``sigma``."""
    t = round_timestep_bf16(sigma * NUM_TRAIN_TIMESTEPS)
    context, mask = texts

    def call(x_in, ctx, msk, aud):
        timestep = t.to(x_in.device).expand(x_in.shape[0], x_in.shape[2]).clone()
        timestep[:, :held] = 0.0
        return dit_fn(x_in, timestep, ctx, msk, audio=aud, **extra).float()

    if not _uses_guidance(text_scale, audio_scale):
        return call(x, context, mask, audio)
    b = x.shape[0]
    neg_ctx, pos_ctx = context[:b], context[b:]
    neg_mask, pos_mask = (None, None) if mask is None else (mask[:b], mask[b:])
    if multi:  # the speaker streams fill the audio batch: one batch-1 call per text
        uncond_text = call(x, neg_ctx, neg_mask, audio)
        cond = call(x, pos_ctx, pos_mask, audio)
    else:
        uncond_text, cond = call(torch.cat([x, x]), context, mask, audio).chunk(2)
    uncond = call(x, neg_ctx, neg_mask, torch.zeros_like(audio))
    return avatar_guidance(cond, uncond_text, uncond, text_scale, audio_scale)


def avatar_denoise(dit_fn, latents: torch.Tensor, sigmas, positive: TextCondition, audio: torch.Tensor,
                   negative: TextCondition | None = None, text_scale: float = 4.0, audio_scale: float = 4.0,
                   num_cond_latents: int = 0, reference: Reference | None = None, speaker_masks=None,
                   use_kv_cache: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """The Avatar sampling loop: Euler over ``sigmas`` with the three-pass guidance.

    latents ``[B, 16, T, h, w]``: noise with the first ``num_cond_latents`` frames clean (an
    image: 1; a continuation: 4), never stepped. audio: windows ``[A, F, 5, L, C]`` of the
    clip's F = 1 + 4(T−1) video frames (A = 1, or the speaker streams with ``speaker_masks``).
    reference: a continuation's reference latent, put in front (with ``use_kv_cache`` the
    reference and condition frames become a KV cache once). Returns fp32 ``[B, 16, T, h, w]``
    (condition frames first, reference dropped). Guidance (either scale > 1) runs three passes
    per step and needs ``negative``.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    if sigmas.dim() != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must be 1-D with a terminal 0, got {sigmas.tolist()}")
    if reference is not None and num_cond_latents < 1:
        raise ValueError("a continuation reference needs condition latents (num_cond_latents >= 1)")
    multi = speaker_masks is not None
    guided = _uses_guidance(text_scale, audio_scale)
    if multi and latents.shape[0] != 1:
        raise ValueError(f"several speakers need batch 1, got {latents.shape[0]}")
    x = latents.float().clone()
    cond = x[:, :, :num_cond_latents]
    extra = {"speaker_masks": speaker_masks}
    clean = num_cond_latents
    if reference is not None:
        ref = reference.latent.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1)
        x = torch.cat([ref, x], dim=2)
        clean += 1
        extra.update(ref_frames=1, ref_index=reference.index, mask_frame_range=reference.mask_frame_range)
    extra["num_cond_latents"] = clean
    held = clean
    if use_kv_cache and reference is not None:  # as the official continuation (never for an image)
        zeros = torch.zeros(1, clean, device=x.device)
        _, extra["kv_cache"] = dit_fn(x[:1, :, :clean], zeros, None, None, num_cond_latents=clean, return_kv=True,
                                      skip_cross_attn=True, ref_frames=1, ref_index=reference.index)
        x, held = x[:, :, clean:].clone(), 0
    texts = _batch_text(positive, negative, guided, x.shape[0])
    total = sigmas.numel() - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = _predict(dit_fn, x, sigma, texts, audio, held, extra, text_scale, audio_scale, multi)
        noisy, v_noisy = x[:, :, held:], v[:, :, held:]
        if callback is not None:
            preview = torch.cat([cond, predicted_x0(noisy, v_noisy, sigma)], dim=2)
        x[:, :, held:] = euler_step(noisy, v_noisy, sigma, sigma_next)
        if callback is not None:
            callback(i, total, preview)
    noise = x[:, :, held:]
    return torch.cat([cond, noise], dim=2)


def continuation_latents(previous_latent: torch.Tensor, overlap_latent: torch.Tensor, version: str,
                         noise: torch.Tensor) -> torch.Tensor:
    """Start latents ``[cond (4) | noise]`` of the next segment.

    1.0 ("latent stitching"): the previous segment's last 4 generated latents as they are;
    1.5: the VAE re-encode of its last 13 frames (``overlap_latent``)."""
    if version == "1.0":
        cond = previous_latent[:, :, -COND_LATENTS:]
    elif version == "1.5":
        cond = overlap_latent
    else:
        raise ValueError(f"version must be '1.0' or '1.5', got {version!r}")
    if cond.shape[2] != COND_LATENTS:
        raise ValueError(f"continuation needs {COND_LATENTS} condition latents, got {cond.shape[2]}")
    return torch.cat([cond.to(noise.device, torch.float32), noise[:, :, COND_LATENTS:]], dim=2)


def extend_segment(dit_fn, encode, previous_frames: torch.Tensor, previous_latent: torch.Tensor,
                   reference: Reference, positive: TextCondition, audio: torch.Tensor, version: str,
                   sigmas, negative: TextCondition | None = None, text_scale: float = 4.0,
                   audio_scale: float = 4.0, speaker_masks=None, use_kv_cache: bool = True,
                   generator=None, callback: Callback | None = None) -> torch.Tensor:
    """One continuation segment (official ``generate_avc``) → latent ``[1, 16, T, h, w]`` whose
    first 4 latents are the re-encode of ``previous_frames[-13:]`` (as the official output): decode
    it whole and drop the first 13 frames for the new ones.

    previous_frames ``[F, H, W, 3]`` in [0, 1] (at least 13); previous_latent the previous
    segment's latent (used by 1.0); audio: the windows of this segment's 1 + 4(T−1) frames.
    """
    if previous_frames.dim() != 4 or previous_frames.shape[0] < OVERLAP_FRAMES:
        raise ValueError(f"previous frames must be [F >= {OVERLAP_FRAMES}, H, W, 3], got "
                         f"{tuple(previous_frames.shape)}")
    frames = audio.shape[1]
    shape = (1, previous_latent.shape[1], 1 + (frames - 1) // 4, *previous_latent.shape[3:])
    noise = make_noise(shape, generator, previous_latent.device)
    overlap = encode(previous_frames[-OVERLAP_FRAMES:]).float().to(noise.device)
    latents = continuation_latents(previous_latent.to(noise.device), overlap, version, noise)
    out = avatar_denoise(dit_fn, latents, sigmas, positive, audio, negative, text_scale, audio_scale,
                         num_cond_latents=COND_LATENTS, reference=reference, speaker_masks=speaker_masks,
                         use_kv_cache=use_kv_cache, callback=callback)
    out[:, :, :COND_LATENTS] = overlap
    return out


def _cover_crop(x: torch.Tensor, height: int, width: int, antialias: bool) -> torch.Tensor:
    """``[N, C, h, w]`` → ``[N, C, height, width]``: resize to cover (bilinear), centre crop."""
    h, w = x.shape[-2:]
    if width / height > w / h:
        new_w, new_h = width, int(h * width / w)
    else:
        new_h, new_w = height, int(w * height / h)
    x = torch.nn.functional.interpolate(x.float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                                        antialias=antialias)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[..., top:top + height, left:left + width]


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Speaker masks ``[K, h, w]`` → ``[K, height, width]`` as the image is fitted: cover-resize
    (bilinear) then centre crop (the official pipeline's mask resize)."""
    return _cover_crop(masks[None], height, width, antialias=False)[0]


def fit_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An image ``[1, h, w, 3]`` in [0, 1] → ``[1, height, width, 3]``: cover-resize and centre crop
    (the official ``resize_mode='crop'``; its resampling filter differs)."""
    return _cover_crop(image.permute(0, 3, 1, 2), height, width, antialias=True).clamp(0, 1).permute(0, 2, 3, 1)
