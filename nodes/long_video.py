"""LongCat Long Video: text-to-video, continuation segments with per-segment prompts, refinement."""

import logging

import comfy.model_management
import torch
from comfy_api.latest import io

from ..longcat.frames import REFINE_SIZE
from ..longcat.long_video import generate_long_video, refine_long_video
from ..longcat.schedules import enhance_hf_sigmas, normal_sigmas, refine_sigmas
from .long_video_settings import LongVideoSettings
from .runtime import VaeCodec, kv_cache_offload, loaded_model, progress_callback, text_condition

log = logging.getLogger(__name__)


def _stage1(model, vae, prompts, negative, settings: LongVideoSettings, t2v, vc, generator,
            callback):
    """``generate_long_video`` on the loaded ``model`` → (frames ``[F, H, W, 3]``, BSA summary)."""
    cfg = 2 if settings.guidance_scale > 1.0 else 1
    shape = settings.stage1_latent_shape()
    cond_latents = (settings.num_cond_frames - 1) // 4 + 1
    with loaded_model(model, shape, cfg, stage=f"Long Video segments ({settings.width}x{settings.height})",
                      cached_frames=cond_latents if settings.use_kv_cache else 0,
                      split=not settings.use_kv_cache,
                      fit_hints=["turn off use_kv_cache"] if settings.use_kv_cache else ()) \
            as (dit_fn, device, bsa_log):
        offload, cache_note = False, None
        if settings.use_kv_cache:  # the segments' cache, placed as LongCat Sampler's "auto" does
            offload, cache_note = kv_cache_offload("auto", model, shape, cond_latents,
                                                   dit_fn.activation_bytes)
            log.info("LongCat Long Video: %s", cache_note)
        codec = VaeCodec(vae, model.model.latent_format, device)
        frames = generate_long_video(
            dit_fn, codec.encode, codec.decode, [text_condition([p], device) for p in prompts],
            None if negative is None else text_condition(negative, device),
            num_segments=settings.num_segments, height=settings.height, width=settings.width,
            num_frames=settings.num_frames, num_cond_frames=settings.num_cond_frames,
            t2v_sigmas=t2v, vc_sigmas=vc, guidance_scale=settings.guidance_scale,
            use_kv_cache=settings.use_kv_cache, offload_kv_cache=offload, generator=generator,
            device=device, callback=callback)
    summary = bsa_log.summary()
    return frames, summary if cache_note is None else f"{cache_note}\n{summary}"


def _refine(model, vae, frames, prompt, settings: LongVideoSettings, sigmas, generator, callback):
    """``refine_long_video`` on the loaded ``model`` → (frames ``[2F, H', W', 3]``, BSA summary).

    The MODEL is loaded for the refinement window's latent (720p, 2x frames), not stage 1's, so
    ComfyUI reserves enough memory for it.
    """
    with loaded_model(model, settings.refine_latent_shape(), stage="Long Video refinement",
                      split=True) as (dit_fn, device, bsa_log):
        codec = VaeCodec(vae, model.model.latent_format, device)
        frames = refine_long_video(
            dit_fn, codec.encode, codec.decode, frames, text_condition(prompt, device),
            window=settings.num_frames, num_cond_frames=settings.num_cond_frames,
            height=settings.refine_height, width=settings.refine_width, t_thresh=settings.t_thresh,
            sigmas=sigmas, generator=generator, callback=callback)
    return frames, bsa_log.summary()


def generate(model, vae, prompts, negative, refine_model, refine_prompt,
             settings: LongVideoSettings):
    """Stage 1, then (with ``refine_model``) refinement → (IMAGE ``[F, H, W, 3]``, report).

    Unset sigmas are the official 50-step schedules (normal for the first clip, enhance_hf for
    the segments, the 50-step list cut at t_thresh for refinement).
    """
    if refine_model is not None and refine_prompt is None:
        raise ValueError("refine_prompt is required with refine_model (official: the empty prompt)")
    t2v = normal_sigmas() if settings.t2v_sigmas is None else settings.t2v_sigmas
    vc = enhance_hf_sigmas() if settings.vc_sigmas is None else settings.vc_sigmas
    refine_list = None if refine_model is None else refine_sigmas(t_thresh=settings.t_thresh)
    total = settings.total_steps(len(t2v) - 1, len(vc) - 1,
                                 None if refine_list is None else len(refine_list) - 1)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    callback = progress_callback(model, total)
    frames, summary = _stage1(model, vae, prompts, negative, settings, t2v, vc, generator, callback)
    report = "stage 1 " + summary
    if refine_model is not None:
        frames, summary = _refine(refine_model, vae, frames, refine_prompt, settings, refine_list,
                                  generator, callback)
        report += "\nrefinement " + summary
    return frames.to(comfy.model_management.intermediate_device()).float(), report


def _optional_inputs() -> list:
    """Negative prompt, custom schedules and the refinement stage's MODEL and prompt."""
    return [
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Negative prompt for stage 1 (needed when "
                                      "guidance_scale > 1)."),
        io.Sigmas.Input("t2v_sigmas", optional=True,
                        tooltip="Schedule of the first clip (default: normal, 50)."),
        io.Sigmas.Input("vc_sigmas", optional=True,
                        tooltip="Schedule of each segment (default: enhance_hf, 50)."),
        io.Model.Input("refine_model", optional=True,
                       tooltip="Connect the MODEL with refinement_lora (+ BSA Settings) "
                               "to refine to 704x1280, 2x frames. Unconnected: stage 1 "
                               "only."),
        io.Conditioning.Input("refine_prompt", optional=True,
                              tooltip="Refinement prompt (official: the empty "
                                      "prompt); required with refine_model."),
    ]


class LongCatLongVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatLongVideo",
            display_name="LongCat Long Video",
            category="LongCat",
            description="Official long-video recipe: text-to-video, then continuation segments "
                        "(each conditioned on the last frames of the previous one, one prompt "
                        "per segment), then optional 720p refinement in overlapping windows.",
            inputs=[
                io.Model.Input("model", tooltip="LongCat MODEL for stage 1 (480p)."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (VAELoader)."),
                io.Conditioning.Input("prompts", tooltip="One prompt per clip in order (first "
                                                         "the text-to-video clip), chained with "
                                                         "Conditioning (Combine); a single "
                                                         "prompt is used for every clip."),
                io.Int.Input("num_segments", default=3, min=0, max=100,
                             tooltip="Continuation segments after the first clip; each adds "
                                     "num_frames - num_cond_frames frames (80 official)."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Stage-1 width (multiple of 16)."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Stage-1 height (multiple of 16)."),
                io.Int.Input("num_frames", default=93, min=5, max=4097, step=4,
                             tooltip="Frames per clip, 4k+1 (93 official)."),
                io.Int.Input("num_cond_frames", default=13, min=1, max=4096,
                             tooltip="Overlap: last frames of a clip that condition the next "
                                     "(13 official)."),
                io.Float.Input("guidance_scale", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="CFG-Zero* scale for stage 1 (4.0 official; 1.0 with "
                                       "the distilled LoRA)."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True, tooltip="Noise seed for the whole run."),
                io.Boolean.Input("use_kv_cache", default=True,
                                 tooltip="Cache the conditioning frames' keys/values per "
                                         "segment (same result, faster)."),
                io.Float.Input("t_thresh", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="Refinement start noise level (0.5 official)."),
                io.Int.Input("refine_width", default=REFINE_SIZE[1], min=64, max=4096, step=64,
                             tooltip="Refinement width, a multiple of 64 (1280 official)."),
                io.Int.Input("refine_height", default=REFINE_SIZE[0], min=64, max=4096, step=64,
                             tooltip="Refinement height, a multiple of 64 (704 official)."),
                *_optional_inputs(),
            ],
            outputs=[
                io.Image.Output(tooltip="All frames: 15 fps for stage 1, 30 fps refined."),
                io.String.Output(display_name="bsa_report",
                                 tooltip="What block-sparse attention did in each stage."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, prompts, num_segments: int, width: int, height: int,
                num_frames: int, num_cond_frames: int, guidance_scale: float, seed: int,
                use_kv_cache: bool, t_thresh: float, refine_width: int, refine_height: int,
                negative=None, t2v_sigmas=None,
                vc_sigmas=None, refine_model=None, refine_prompt=None) -> io.NodeOutput:
        settings = LongVideoSettings(
            num_segments=num_segments, width=width, height=height, num_frames=num_frames,
            num_cond_frames=num_cond_frames, guidance_scale=guidance_scale, seed=seed,
            use_kv_cache=use_kv_cache, t_thresh=t_thresh, refine_width=refine_width,
            refine_height=refine_height, t2v_sigmas=t2v_sigmas, vc_sigmas=vc_sigmas)
        frames, report = generate(model, vae, prompts, negative, refine_model, refine_prompt,
                                  settings)
        return io.NodeOutput(frames, report)


NODES = [LongCatLongVideo]
