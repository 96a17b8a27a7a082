"""LongCat Refine 720p: 480p stage-1 frames → 704×1280 (and 2× frames) with the refinement LoRA."""

import logging

import comfy.model_management
import torch
from comfy_api.latest import io

from ..longcat.frames import REFINE_SIZE, latent_shape, refine_plan
from ..longcat.refine import refine
from ..longcat.schedules import refine_sigmas
from .sampling_inputs import COND_LATENTS_KEY
from .runtime import VaeCodec, loaded_model, progress_callback, text_condition

log = logging.getLogger(__name__)


def refine_frames(model, vae, positive, frames, width: int, height: int, t_thresh: float,
                  spatial_refine_only: bool, seed: int, cond_frames=None, num_cond_frames: int = 0):
    """Run ``longcat.refine.refine`` on IMAGE frames → (IMAGE, LATENT, BSA summary)."""
    latent_format = model.model.latent_format
    sigmas = refine_sigmas(t_thresh=t_thresh)  # official: the 50-step schedule cut at t_thresh
    generator = torch.Generator("cpu").manual_seed(seed)
    if cond_frames is None:
        num_cond_frames = 0
    plan = refine_plan(frames.shape[0], num_cond_frames, spatial_refine_only)
    stage = f"Refine ({width}x{height}, {plan.latent_frames} latent frames)"
    hints = [] if spatial_refine_only else ["set spatial_refine_only (1x frames: half the tokens)"]
    with loaded_model(model, latent_shape(plan.latent_frames, height, width), stage=stage,
                      split=plan.cond_latents > 0, fit_hints=hints) as (dit_fn, device, bsa_log):
        codec = VaeCodec(vae, latent_format, device)
        result = refine(dit_fn, codec.encode, codec.decode, frames[..., :3],
                        text_condition(positive, device),
                        cond_frames=cond_frames[..., :3] if num_cond_frames else None,
                        num_cond_frames=num_cond_frames, height=height, width=width,
                        t_thresh=t_thresh, sigmas=sigmas, spatial_refine_only=spatial_refine_only,
                        generator=generator, callback=progress_callback(model, len(sigmas) - 1))
    intermediate = comfy.model_management.intermediate_device()
    latent = {"samples": latent_format.process_out(result.latent).to(intermediate),
              COND_LATENTS_KEY: result.plan.cond_latents}
    summary = bsa_log.summary()
    log.info("LongCat Refine 720p: %s", summary)
    return result.frames.to(intermediate).float(), latent, summary


class LongCatRefine720p(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatRefine720p",
            display_name="LongCat Refine 720p",
            category="LongCat",
            description="Official refinement: upsample 480p frames to 704x1280 (and 2x frames), "
                        "re-encode, noise to t_thresh and denoise 5 steps without CFG. Give it "
                        "the MODEL with the refinement LoRA (and BSA Settings, 'refine 720p').",
            inputs=[
                io.Model.Input("model", tooltip="LongCat MODEL with refinement_lora applied "
                                                "(LongCat LoRA), ideally with BSA Settings."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (VAELoader)."),
                io.Conditioning.Input("positive", tooltip="Refine prompt (official demos: the "
                                                          "stage-1 prompt, or empty for long "
                                                          "videos)."),
                io.Image.Input("frames", tooltip="Stage-1 frames (e.g. 93 frames at 480x832)."),
                io.Int.Input("width", default=REFINE_SIZE[1], min=64, max=4096, step=64,
                             tooltip="Target width, a multiple of 64 (1280 official)."),
                io.Int.Input("height", default=REFINE_SIZE[0], min=64, max=4096, step=64,
                             tooltip="Target height, a multiple of 64 (704 official)."),
                io.Float.Input("t_thresh", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="Noise level refinement starts from (0.5 official: 5 "
                                       "steps). Higher changes more."),
                io.Boolean.Input("spatial_refine_only", default=False,
                                 tooltip="Off: 2x frames (15 -> 30 fps). On: same frame count, "
                                         "only the resolution changes."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True, tooltip="Noise seed."),
                io.Image.Input("cond_frames", optional=True,
                               tooltip="Clean frames at the target frame rate that start the "
                                       "result (an image for image-to-video, or the previous "
                                       "refined window)."),
                io.Int.Input("num_cond_frames", default=0, min=0, max=4096, optional=True,
                             tooltip="How many of cond_frames' last frames are held (counted "
                                     "after 2x: 26 for a 13-frame overlap; 1 for an image)."),
            ],
            outputs=[
                io.Image.Output(tooltip="Refined frames (conditioning frames included)."),
                io.Latent.Output(tooltip="Refined latent, padded to multiples of 4 latent "
                                         "frames as the official pipeline does."),
                io.String.Output(display_name="bsa_report",
                                 tooltip="What block-sparse attention did in this run."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, frames, width: int, height: int, t_thresh: float,
                spatial_refine_only: bool, seed: int, cond_frames=None,
                num_cond_frames: int = 0) -> io.NodeOutput:
        images, latent, report = refine_frames(model, vae, positive, frames, width, height,
                                               t_thresh, spatial_refine_only, seed, cond_frames,
                                               num_cond_frames)
        return io.NodeOutput(images, latent, report)


NODES = [LongCatRefine720p]
