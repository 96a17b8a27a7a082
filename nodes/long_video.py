"""LongCat Long Video: text-to-video, continuation segments with per-segment prompts, refinement."""

import contextlib
import logging

import comfy.model_management
import torch
from comfy_api.latest import io

from ..longcat.long_video import generate_long_video, refine_long_video, refine_windows
from ..longcat.frames import REFINE_SIZE
from ..longcat.schedules import enhance_hf_sigmas, normal_sigmas, refine_sigmas
from .runtime import VaeCodec, loaded_model, progress_callback, text_condition

log = logging.getLogger(__name__)


def total_steps(t2v_sigmas, vc_sigmas, num_segments, num_frames, num_cond_frames,
                refine_steps: int | None) -> int:
    """DiT loop steps of a whole long-video run (one progress bar over all of them)."""
    steps = len(t2v_sigmas) - 1 + num_segments * (len(vc_sigmas) - 1)
    if refine_steps is not None:
        frames = num_frames + num_segments * (num_frames - num_cond_frames)
        steps += len(refine_windows(frames, num_frames, num_cond_frames)) * refine_steps
    return steps


def generate(model, vae, prompts, negative, refine_model, refine_prompt, settings: dict):
    """Stage 1 (``generate_long_video``), then optionally ``refine_long_video`` → (IMAGE, report)."""
    t2v = normal_sigmas(50) if settings["t2v_sigmas"] is None else settings["t2v_sigmas"]
    vc = enhance_hf_sigmas(50) if settings["vc_sigmas"] is None else settings["vc_sigmas"]
    refine_list = None
    if refine_model is not None:
        if refine_prompt is None:
            raise ValueError("refine_prompt is required with refine_model (official: the empty prompt)")
        refine_list = refine_sigmas(50, settings["t_thresh"])
    frames_per_clip, overlap = settings["num_frames"], settings["num_cond_frames"]
    total = total_steps(t2v, vc, settings["num_segments"], frames_per_clip, overlap,
                        None if refine_list is None else len(refine_list) - 1)
    h, w = settings["height"], settings["width"]
    shape = (1, 16, (frames_per_clip - 1) // 4 + 1, h // 8, w // 8)
    generator = torch.Generator("cpu").manual_seed(settings["seed"])
    callback = progress_callback(model, total)
    with contextlib.ExitStack() as stack:
        cfg = 2 if settings["guidance_scale"] > 1.0 else 1
        dit_fn, device, base_log = stack.enter_context(loaded_model(model, shape, cfg))
        codec = VaeCodec(vae, model.model.latent_format, device)
        frames = generate_long_video(
            dit_fn, codec.encode, codec.decode, [text_condition([p], device) for p in prompts],
            None if negative is None else text_condition(negative, device),
            num_segments=settings["num_segments"], height=h, width=w, num_frames=frames_per_clip,
            num_cond_frames=overlap, t2v_sigmas=t2v, vc_sigmas=vc,
            guidance_scale=settings["guidance_scale"], use_kv_cache=settings["use_kv_cache"],
            generator=generator, device=device, callback=callback)
        report = "stage 1 " + base_log.summary()
        if refine_model is not None:
            refine_fn, _, refine_log = stack.enter_context(loaded_model(refine_model, shape))
            frames = refine_long_video(
                refine_fn, codec.encode, codec.decode, frames, text_condition(refine_prompt, device),
                window=frames_per_clip, num_cond_frames=overlap, height=settings["refine_height"],
                width=settings["refine_width"], t_thresh=settings["t_thresh"],
                sigmas=refine_list, generator=generator, callback=callback)
            report += "\nrefinement " + refine_log.summary()
    return frames.to(comfy.model_management.intermediate_device()).float(), report


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
        settings = dict(num_segments=num_segments, width=width, height=height,
                        num_frames=num_frames, num_cond_frames=num_cond_frames,
                        guidance_scale=guidance_scale, seed=seed, use_kv_cache=use_kv_cache,
                        t_thresh=t_thresh, refine_width=refine_width, refine_height=refine_height,
                        t2v_sigmas=t2v_sigmas, vc_sigmas=vc_sigmas)
        frames, report = generate(model, vae, prompts, negative, refine_model, refine_prompt,
                                  settings)
        return io.NodeOutput(frames, report)


NODES = [LongCatLongVideo]
