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

from ..longcat import memory as longcat_memory
from ..longcat.options import BSA_LOG_KEY, BSA_OPTIONS_KEY, RAW_OUTPUT_KEY, SIGMAS_KEY
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
        self.activation_bytes = memory[0]

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
def loaded_model(patcher, latent_shape, batch_multiplier: int = 1, stage: str = "sampling",
                 cached_frames: int = 0, split: bool = False, fit_hints=()):
    """Load ``patcher`` the way ComfyUI's samplers do and yield ``(dit_fn, device, bsa_log)``.

    latent_shape: ``[B, C, T, H, W]`` of one forward without CFG; ``batch_multiplier`` 2 with CFG.
    cached_frames / split: what the forwards do with conditioning frames (``memory_required``).
    ComfyUI keeps the forward's activation estimate free and loads as much of the DiT as fits
    beside it (``dit_fn.activation_bytes``). Runs the patcher's pre-run/cleanup callbacks; the BSA
    log collects what BSA did. Out of GPU memory anywhere inside: one error naming ``stage``, the
    card and what to change (``fit_hints`` first).
    """
    check_longcat(patcher)
    shape = list(latent_shape)
    full = [shape[0] * batch_multiplier] + shape[1:]
    bsa = BSA_OPTIONS_KEY in patcher.model_options.get("transformer_options", {})
    need = patcher.model.memory_required(full, bsa=bsa, cached_frames=cached_frames, split=split)
    # Both numbers are the batched forward: CFG always runs [uncond, cond] in one batch here, so
    # ComfyUI's fallback of running them one at a time never applies.
    memory = (need, need)
    try:
        comfy.model_management.load_models_gpu([patcher], memory_required=memory[0],
                                               minimum_memory_required=memory[1])
        gib = 2**30
        log.info("LongCat %s: activation estimate %.2f GiB; DiT %.2f of %.2f GiB loaded on %s", stage,
                 need / gib, patcher.loaded_size() / gib, patcher.model_size() / gib, patcher.load_device)
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
    except torch.OutOfMemoryError as err:
        raise torch.OutOfMemoryError(out_of_memory_message(patcher, stage, need, fit_hints)) from err


def out_of_memory_message(patcher, stage: str, activation_bytes: int, fit_hints=()) -> str:
    """One line for a stage that does not fit: the stage, the card, the DiT's size and what to
    change (the caller's hints, then fp8 weights when the DiT is not fp8, then free VRAM)."""
    device = patcher.load_device
    gib = 2**30
    # What ComfyUI plans with: the card less its reserve (--reserve-vram).
    total = (comfy.model_management.get_total_memory(device)
             - comfy.model_management.extra_reserved_memory()) / gib
    weights = patcher.model_size() / gib
    hints = list(fit_hints)
    if patcher.model.get_dtype().itemsize > 1:
        hints.append("load the DiT in fp8 (Load LongCat-Video Model: weight_dtype fp8_e4m3fn, "
                     "or Kijai's fp8 file)")
    hints.append("close other programs using the GPU")
    return (f"LongCat {stage}: out of GPU memory with {total:.1f} GiB usable (DiT weights "
            f"{weights:.1f} GiB, activations ~{activation_bytes / gib:.1f} GiB). To fit: "
            + "; ".join(hints) + ".")


def kv_cache_offload(choice, patcher, latent_shape, cond_frames: int, activation_bytes: int):
    """Where the continuation KV cache lives → ``(offload: bool, one-line description)``.

    choice: "auto" (on the GPU when the cache and the sampling forward's activations fit in the
    free memory ComfyUI reports after loading the DiT; else pinned CPU memory, copied to the GPU
    one block ahead of use), "cpu" or "gpu" (ComfyUI rejects anything else before the node runs)."""
    if choice not in KV_CACHE_PLACEMENTS:
        raise ValueError(f"offload_kv_cache must be one of {KV_CACHE_PLACEMENTS}, got {choice!r}")
    dit = patcher.model.diffusion_model
    _, ph, pw = dit.patch_size
    tokens = cond_frames * (latent_shape[3] // ph) * (latent_shape[4] // pw)
    itemsize = torch.empty((), dtype=patcher.model.manual_cast_dtype or patcher.model.get_dtype()).element_size()
    size = longcat_memory.kv_cache_bytes(dit.depth, dit.hidden_size, latent_shape[0], tokens, itemsize)
    free = free_memory(patcher.load_device)
    placement = choice
    if choice == "auto":
        placement = longcat_memory.choose_kv_placement(size, free, activation_bytes)
    gib = 2**30
    device = patcher.load_device
    where = (f"on {device}" if placement == "gpu" else
             f"in pinned CPU memory, streamed to {device} one block ahead")
    why = (f"auto: {free / gib:.1f} GiB free, sampling needs ~{activation_bytes / gib:.1f} GiB"
           if choice == "auto" else "chosen")
    return placement == "cpu", f"KV cache {size / gib:.2f} GiB {where} ({why})."


KV_CACHE_PLACEMENTS = ("auto", "cpu", "gpu")


def free_memory(device) -> int:
    """Free memory ComfyUI reports for ``device`` (its VRAM, or RAM for the CPU)."""
    return comfy.model_management.get_free_memory(device)


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
