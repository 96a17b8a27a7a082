"""ComfyUI glue for running the model package's pipelines on a LongCat MODEL.

Gives the pipelines what ARCHITECTURE.md promises them: ``dit_fn`` (the loaded DiT forward with
the MODEL's transformer_options bound, through ``apply_model`` so TorchCompileModel and other
APPLY_MODEL wrappers apply), ``encode``/``decode`` over a stock VAE, text conditions from
CONDITIONING, and a ``callback`` that drives ProgressBar, latent previews and Cancel.
"""

import contextlib
import logging

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import latent_preview
import torch

from ..longcat.options import BSA_LOG_KEY, RAW_OUTPUT_KEY, SIGMAS_KEY
from ..longcat.pipelines import TextCondition
from .bsa_report import BSARunLog
from .text_condition import pad_text_condition
from .model_adapter import LongCatVideoModel

log = logging.getLogger(__name__)


# Wrappers of ComfyUI's sampling loop (EasyCache, LazyCache, ...). The LongCat nodes' own
# sampling runs only APPLY_MODEL wrappers (TorchCompileModel), through ``apply_model``.
_SAMPLER_ONLY_WRAPPERS = tuple(
    getattr(comfy.patcher_extension.WrappersMP, name) for name in
    ("OUTER_SAMPLE", "PREPARE_SAMPLING", "SAMPLER_SAMPLE", "PREDICT_NOISE", "CALC_COND_BATCH",
     "DIFFUSION_MODEL"))


def check_longcat(model) -> None:
    """Raise TypeError unless ``model`` is a MODEL built by Load LongCat-Video Model."""
    if not isinstance(getattr(model, "model", None), LongCatVideoModel):
        raise TypeError("model must come from 'Load LongCat-Video Model' (a LongCat-Video MODEL), "
                        f"got {type(getattr(model, 'model', model)).__name__}")


def text_condition(conditioning, device=None) -> TextCondition:
    """CONDITIONING from CLIPTextEncode (CLIP type wan) → ``TextCondition`` (512 tokens + mask)."""
    if not conditioning:
        raise ValueError("conditioning is empty; connect a CLIPTextEncode output")
    if len(conditioning) > 1:
        log.warning("LongCat: %d conditioning entries given; only the first is used "
                    "(area/combine conditioning is not supported)", len(conditioning))
    context, mask = pad_text_condition(conditioning[0][0])
    if device is not None:
        context, mask = context.to(device), mask.to(device)
    return TextCondition(context, mask)


class _DitCaller:
    """``dit_fn`` for the pipelines: official output of the loaded MODEL at one call."""

    def __init__(self, patcher, options: dict, memory: tuple[int, int]):
        self.patcher, self.options, self.memory = patcher, options, memory

    def __call__(self, x, timestep, context, context_mask=None, **kwargs):
        # VAE encodes/decodes between denoising loops (refine, long video) may have evicted the
        # DiT; loading is a no-op when it is still resident.
        comfy.model_management.load_models_gpu([self.patcher], memory_required=self.memory[0],
                                               minimum_memory_required=self.memory[1])
        opts = self.options.copy()
        timestep = torch.as_tensor(timestep, device=x.device, dtype=torch.float32)
        # The DiT gates BSA's step window on the current sigma (largest per-frame value).
        opts[SIGMAS_KEY] = (timestep.max() / 1000.0).reshape(1)
        opts[RAW_OUTPUT_KEY] = True
        return self.patcher.model.apply_model(x, timestep, c_crossattn=context,
                                              transformer_options=opts,
                                              context_mask=context_mask, **kwargs)


@contextlib.contextmanager
def loaded_model(patcher, latent_shape, batch_multiplier: int = 1):
    """Load ``patcher`` the way ComfyUI's samplers do and yield ``(dit_fn, device, bsa_log)``.

    latent_shape: ``[B, C, T, H, W]`` of one forward without CFG; ``batch_multiplier`` 2 with CFG.
    Runs the patcher's pre-run/cleanup callbacks; the BSA log collects what BSA did.
    """
    check_longcat(patcher)
    shape = list(latent_shape)
    full = [shape[0] * batch_multiplier] + shape[1:]
    memory = (patcher.model.memory_required(full), patcher.model.memory_required(shape))
    comfy.model_management.load_models_gpu([patcher], memory_required=memory[0],
                                           minimum_memory_required=memory[1])
    options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    opts = options.setdefault("transformer_options", {})
    comfy.patcher_extension.merge_nested_dicts(opts.setdefault("wrappers", {}), patcher.wrappers,
                                               copy_dict1=False)
    ignored = [f"{kind} wrappers" for kind in _SAMPLER_ONLY_WRAPPERS
               if comfy.patcher_extension.get_all_wrappers(kind, opts)]
    ignored += ["context windows"] if "context_handler" in options else []
    if ignored:
        log.warning("LongCat: the MODEL carries patches that run only under ComfyUI's samplers "
                    "(KSampler, SamplerCustom), e.g. EasyCache, LazyCache, context windows: %s; "
                    "the LongCat sampling nodes ignore them", ", ".join(ignored))
    bsa_log = BSARunLog()
    opts[BSA_LOG_KEY] = bsa_log
    try:
        patcher.pre_run()
        yield _DitCaller(patcher, opts, memory), patcher.load_device, bsa_log
    finally:
        patcher.cleanup()


def progress_callback(patcher, total: int):
    """Pipeline ``callback(step, steps, x0_preview)``: ProgressBar, preview and Cancel per step.

    Counts calls rather than trusting ``step``, so one bar spans several denoising loops (long
    video: t2v, each segment, each refinement window) when ``total`` is their sum. x0_preview is
    the normalized latent ``[B, 16, T, h, w]``, the space ComfyUI's own samplers preview in.
    """
    previewer = latent_preview.get_previewer(patcher.load_device, patcher.model.latent_format)
    pbar = comfy.utils.ProgressBar(total)
    done = 0

    def callback(step, steps, x0_preview=None):
        nonlocal done
        comfy.model_management.throw_exception_if_processing_interrupted()
        done += 1
        preview = None
        if previewer is not None and x0_preview is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", x0_preview)
        pbar.update_absolute(min(done, total), total, preview)

    return callback


class VaeCodec:
    """``encode``/``decode`` over a stock Wan 2.1 VAE in the DiT's normalized latent space.

    encode: frames ``[F, H, W, 3]`` in [0, 1] → normalized ``[1, 16, T, H/8, W/8]`` on ``device``.
    ComfyUI's Wan VAE returns the posterior mean where the official pipeline samples the
    posterior; the difference is the VAE's (small) posterior noise.
    decode: normalized latent → frames ``[F, H, W, 3]`` in [0, 1] on the intermediate device.
    """

    def __init__(self, vae, latent_format, device):
        self.vae, self.latent_format, self.device = vae, latent_format, device

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        raw = self.vae.encode(frames[..., :3])
        return self.latent_format.process_in(raw.to(self.device, torch.float32))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        images = self.vae.decode(self.latent_format.process_out(latent.float()))
        return images.reshape(-1, *images.shape[-3:])
