"""Long videos (official ``run_demo_long_video.py`` / ``run_demo_interactive_video.py``, docs/pipelines.md, Pipelines).

Stage 1: text-to-video, then continuation segments, each conditioned on the last
``num_cond_frames`` frames of the previous segment and adding ``num_frames − num_cond_frames``
new frames, one prompt per segment. Stage 2 (optional): refinement over windows of
``window`` stage-1 frames with stride ``window − num_cond_frames``; every window after the first
is conditioned on the previous refined window's last overlap frames. No ComfyUI import.

Frames pass between clips exactly as ``decode`` returns them. The official demos round-trip
them through uint8 (``(x·255).astype(uint8)``, truncating, then /255 on re-encode); a ``decode``
that does the same reproduces the demos' frames exactly (checked against the official pipeline
on a tiny random model, where float frames differed by at most one uint8 level).
"""

import logging
from collections.abc import Sequence

import torch

from .frames import REFINE_SIZE, STAGE1_SIZE
from .pipelines import TextCondition, continue_video, text_to_video
from .refine import refine

logger = logging.getLogger(__name__)


def _check_decoded(frames: torch.Tensor, expect: int, what: str) -> torch.Tensor:
    if frames.dim() != 4 or frames.shape[0] != expect:
        raise ValueError(f"decode returned {tuple(frames.shape)} for {what}, expected [{expect}, H, W, 3]")
    return frames


def segment_prompts(prompts: Sequence[TextCondition], num_segments: int | None) -> list[TextCondition]:
    """One prompt per stage-1 clip (t2v + segments): ``prompts`` as given, or one prompt repeated."""
    if not prompts:
        raise ValueError("prompts must hold at least one TextCondition")
    count = len(prompts) if num_segments is None else num_segments + 1
    if len(prompts) not in (1, count):
        raise ValueError(f"prompts must be 1 or num_segments + 1 = {count} conditions, got {len(prompts)}")
    return list(prompts) * count if len(prompts) == 1 else list(prompts)


def generate_long_video(dit_fn, encode, decode, prompts: Sequence[TextCondition],
                        negative: TextCondition | None = None, *, num_segments: int | None = None,
                        height: int = STAGE1_SIZE[0], width: int = STAGE1_SIZE[1], num_frames: int = 93,
                        num_cond_frames: int = 13, t2v_sigmas=None, vc_sigmas=None, guidance_scale: float = 4.0,
                        use_kv_cache: bool = True, offload_kv_cache: bool = False, generator=None, device=None,
                        callback=None) -> torch.Tensor:
    """Stage 1 of a long video → frames ``[num_frames + S·(num_frames − num_cond_frames), H, W, 3]``.

    prompts: ``S + 1`` conditions (clip i uses prompt i, the interactive demo) or one for all.
    num_segments: S, default ``len(prompts) − 1``. Sigmas default to the official 50-step
    t2v schedule and the ``enhance_hf`` continuation schedule.
    """
    clips = segment_prompts(prompts, num_segments)
    common = {"guidance_scale": guidance_scale, "generator": generator, "device": device, "callback": callback}
    latent = text_to_video(dit_fn, clips[0], negative, height=height, width=width, num_frames=num_frames,
                           sigmas=t2v_sigmas, **common)
    current = _check_decoded(decode(latent), num_frames, "the text-to-video clip")
    pieces = [current]
    for index, prompt in enumerate(clips[1:], start=1):
        logger.info("long video: segment %d/%d", index, len(clips) - 1)
        latent = continue_video(dit_fn, encode, current, prompt, negative, num_frames=num_frames,
                                num_cond_frames=num_cond_frames, sigmas=vc_sigmas, use_kv_cache=use_kv_cache,
                                offload_kv_cache=offload_kv_cache, **common)
        current = _check_decoded(decode(latent), num_frames, f"segment {index}")
        pieces.append(current[num_cond_frames:])
    return torch.cat(pieces)


def refine_windows(total_frames: int, window: int = 93, num_cond_frames: int = 13) -> list[tuple[int, int]]:
    """Stage-1 frame ranges ``[start, end)`` refined one after another (stride ``window − num_cond_frames``).

    973 frames (93 + 11·80) → 12 windows; the last window may be shorter than ``window``.
    """
    if not 0 <= num_cond_frames < window:
        raise ValueError(f"num_cond_frames must be in [0, window={window}), got {num_cond_frames}")
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    stride, start, out = window - num_cond_frames, 0, []
    while True:
        end = min(start + window, total_frames)
        out.append((start, end))
        if end == total_frames:
            return out
        start += stride


def refine_long_video(dit_fn, encode, decode, frames: torch.Tensor, positive: TextCondition, *,
                      window: int = 93, num_cond_frames: int = 13, height: int = REFINE_SIZE[0],
                      width: int = REFINE_SIZE[1], t_thresh: float = 0.5, sigmas=None,
                      spatial_refine_only: bool = False, generator=None, callback=None) -> torch.Tensor:
    """Refine a long stage-1 video window by window → ``[2·F, H, W, 3]`` (``[F, …]`` spatial only).

    frames: ``[F, h0, w0, 3]`` in [0, 1]. positive: the refine prompt (the official demos use
    the empty prompt). Window k > 0 holds the previous refined window's last
    ``num_cond_frames·2`` frames (``·1`` spatial only) clean, like the official demo's 26.
    """
    factor = 1 if spatial_refine_only else 2
    pieces, previous, held = [], None, 0
    for index, (start, end) in enumerate(refine_windows(frames.shape[0], window, num_cond_frames)):
        logger.info("long video: refine window %d (frames %d-%d)", index, start, end)
        result = refine(dit_fn, encode, decode, frames[start:end], positive, cond_frames=previous,
                        num_cond_frames=held, height=height, width=width, t_thresh=t_thresh, sigmas=sigmas,
                        spatial_refine_only=spatial_refine_only, generator=generator, callback=callback)
        pieces.append(result.frames[held:])
        previous, held = result.frames, num_cond_frames * factor
    return torch.cat(pieces)


def long_video(dit_fn, encode, decode, prompts: Sequence[TextCondition], negative: TextCondition | None = None, *,
               refine_dit_fn=None, refine_prompt: TextCondition | None = None, refine_height: int = REFINE_SIZE[0],
               refine_width: int = REFINE_SIZE[1], **stage1) -> torch.Tensor:
    """Stage 1 (``generate_long_video``), then, with ``refine_dit_fn`` (the DiT with the refinement
    LoRA and BSA), ``refine_long_video`` with ``refine_prompt``. ``stage1``: keyword arguments of
    ``generate_long_video``; its generator and callback are reused for refinement."""
    if refine_dit_fn is not None and refine_prompt is None:
        raise ValueError("refine_prompt is required with refine_dit_fn (official: the empty prompt)")
    frames = generate_long_video(dit_fn, encode, decode, prompts, negative, **stage1)
    if refine_dit_fn is None:
        return frames
    return refine_long_video(refine_dit_fn, encode, decode, frames, refine_prompt,
                             window=stage1.get("num_frames", 93), num_cond_frames=stage1.get("num_cond_frames", 13),
                             height=refine_height, width=refine_width, generator=stage1.get("generator"),
                             callback=stage1.get("callback"))
