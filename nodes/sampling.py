"""LongCat Scheduler (official sigma lists) and LongCat Sampler (official Euler + CFG-Zero*)."""

import logging

import comfy.model_management
import comfy.sample
import torch
from comfy_api.latest import io

from ..longcat.pipelines import denoise, make_noise
from ..longcat.schedules import SHIFT
from .runtime import (
    KV_CACHE_PLACEMENTS,
    check_longcat,
    kv_cache_offload,
    loaded_model,
    progress_callback,
    text_condition,
)
from .sampling_inputs import COND_LATENTS_KEY, SCHEDULES, schedule_sigmas, start_latents

log = logging.getLogger(__name__)


class LongCatScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatScheduler",
            display_name="LongCat Scheduler",
            category="LongCat",
            description="The official LongCat-Video sigma schedules (flow matching, static shift), "
                        "with the terminal 0. Stock ComfyUI schedulers do not reproduce them.",
            inputs=[
                io.Combo.Input("mode", options=list(SCHEDULES), default="normal",
                               tooltip="normal: linspace(1, 0.001) shifted (50 steps, guidance "
                                       "4). distill: the cfg_step_lora grid (16 steps, guidance "
                                       "1). enhance_hf: continuation schedule, steps above t=500 "
                                       "then 10 fine steps (56 for 50). refine: the 50-step "
                                       "list cut at t_thresh (5 steps at 0.5)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Steps of the underlying schedule (normal 50, distill 16; "
                                     "enhance_hf and refine derive their steps from it)."),
                io.Float.Input("t_thresh", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="refine only: the noise level refinement starts from."),
                io.Float.Input("shift", default=SHIFT, min=0.01, max=100.0, step=0.01,
                               tooltip="Static flow shift k*s/(1+(k-1)*s); LongCat-Video uses 12."),
            ],
            outputs=[io.Sigmas.Output(tooltip="Sigmas with the terminal 0, for LongCat Sampler "
                                              "(or SamplerCustom).")],
        )

    @classmethod
    def execute(cls, mode: str, steps: int, t_thresh: float, shift: float) -> io.NodeOutput:
        return io.NodeOutput(schedule_sigmas(mode, steps, t_thresh, shift))


def sample_latent(model, positive, negative, latent: dict, sigmas, seed: int, guidance: float,
                  use_kv_cache: bool, offload_kv_cache="auto"):
    """Run ``pipelines.denoise`` on a LATENT (clean cond frames first) → (LATENT, BSA summary)."""
    check_longcat(model)
    latent_format = model.model.latent_format
    # As the stock KSampler: an empty image latent (EmptyLatentImage) becomes one video frame.
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"]).float()
    num_cond = int(latent.get(COND_LATENTS_KEY, 0))
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    noise = make_noise(samples.shape, torch.Generator("cpu").manual_seed(seed))
    x = start_latents(samples, noise, float(sigmas[0]), num_cond, latent_format.process_in)
    batch = 2 if guidance > 1.0 else 1
    cached = num_cond if use_kv_cache else 0
    t, h, w = x.shape[2:]
    stage = (f"Sampler ({w * 8}x{h * 8}, {t} latent frames, batch {x.shape[0] * batch}"
             + (f", {num_cond} cached" if cached else "") + ")")
    hints = ["use a shorter or smaller video"]
    if cached:
        hints.insert(0, "set offload_kv_cache to cpu")
    cache_note = None
    with loaded_model(model, x.shape, batch, stage=stage, cached_frames=cached,
                      split=num_cond > 0 and not cached, fit_hints=hints) as (dit_fn, device, bsa_log):
        offload = False
        if cached:
            offload, cache_note = kv_cache_offload(offload_kv_cache, model, x.shape, num_cond,
                                                   dit_fn.activation_bytes)
            log.info("LongCat Sampler: %s", cache_note)
        positive_cond = text_condition(positive, device)
        negative_cond = None if negative is None else text_condition(negative, device)
        out = denoise(dit_fn, x.to(device), sigmas, positive_cond, negative_cond, guidance,
                      num_cond_latents=num_cond, use_kv_cache=bool(cached), offload_kv_cache=offload,
                      callback=progress_callback(model, len(sigmas) - 1))
    raw = latent_format.process_out(out).to(comfy.model_management.intermediate_device())
    result = {**latent, "samples": raw, COND_LATENTS_KEY: num_cond}
    result.pop("noise_mask", None)
    summary = bsa_log.summary()
    log.info("LongCat Sampler: %s", summary)
    if cache_note is not None:
        summary = f"{cache_note}\n{summary}"
    return result, summary


class LongCatSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatSampler",
            display_name="LongCat Sampler",
            category="LongCat",
            description="The official LongCat-Video sampler: Euler on the given sigmas with "
                        "CFG-Zero* guidance; clean conditioning frames (image-to-video, "
                        "continuation) are held at t=0 and never stepped.",
            inputs=[
                io.Model.Input("model", tooltip="A LongCat-Video MODEL (LoRA and BSA Settings "
                                                "nodes may sit in between)."),
                io.Conditioning.Input("positive", tooltip="Prompt from CLIPTextEncode with "
                                                          "CLIPLoader type 'wan' (umT5-XXL)."),
                io.Latent.Input("latent", tooltip="Start latent: EmptyHunyuanLatentVideo for "
                                                  "text-to-video, or LongCat Image to Video / "
                                                  "Continue Video (clean frames in front)."),
                io.Sigmas.Input("sigmas", tooltip="From LongCat Scheduler. A first sigma below 1 "
                                                  "starts from the latent noised to that level."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True, tooltip="Noise seed (CPU generator)."),
                io.Float.Input("guidance_scale", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="CFG-Zero* scale: 4.0 official (50 steps); 1.0 for the "
                                       "distilled LoRA and refinement (no negative pass)."),
                io.Boolean.Input("use_kv_cache", default=True,
                                 tooltip="Continuation: compute the conditioning frames' "
                                         "attention keys/values once instead of every step "
                                         "(same result, faster). Ignored without cond frames."),
                io.Combo.Input("offload_kv_cache", options=list(KV_CACHE_PLACEMENTS), default="auto",
                               tooltip="Where that cache (~4.6 GB at 480p in bf16) lives. auto: on "
                                       "the GPU when it fits next to the sampling in the free "
                                       "VRAM, else in pinned CPU RAM, copied in one block ahead "
                                       "(same result). cpu / gpu: always there. The choice is "
                                       "logged and written in bsa_report."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt; required when guidance_scale "
                                              "> 1 (official: a long Wan-style negative)."),
            ],
            outputs=[
                io.Latent.Output(tooltip="Denoised latent (conditioning frames included); decode "
                                         "with VAEDecode and the Wan 2.1 VAE."),
                io.String.Output(display_name="bsa_report",
                                 tooltip="What block-sparse attention did in this run: calls, "
                                         "density, kept chunks, kernel path and why."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, sigmas, seed: int, guidance_scale: float,
                use_kv_cache: bool, offload_kv_cache: str, negative=None) -> io.NodeOutput:
        result, report = sample_latent(model, positive, negative, latent, sigmas, seed,
                                       guidance_scale, use_kv_cache, offload_kv_cache)
        return io.NodeOutput(result, report)


NODES = [LongCatScheduler, LongCatSampler]
