"""LongCat-Video as a native ComfyUI MODEL: config class, BaseModel subclass, loader.

Follows ComfyUI's three layers for a native model: ``LongCatVideoConfig`` declares (latent format
Wan21, flow sampling with shift 12, dtypes), ``LongCatVideoModel`` turns CONDITIONING into the
DiT's keyword arguments (``extra_conds``) and applies the sampling convention, and
``longcat.dit.LongCatVideoDiT`` is the math, built from ``comfy.ops`` operations with ComfyUI's
``optimized_attention`` injected. ``load_longcat_model`` mirrors
``comfy.sd.load_diffusion_model_state_dict`` so manual cast, fp8 weights and offload behave as
for any native model. Kijai's files load too (``longcat.kijai``): their scaled fp8 weights stay
fp8 with per-row scales (``scaled_ops``), and ComfyUI's LoRA loaders get the key map for
Kijai's Wan-style LoRA names (``install_lora_key_map``). Files in ComfyUI's quantized format
(``longcat.quant``: fp8, int8, nvfp4 layers) load through ComfyUI's own mixed-precision ops
(``quantized_operations``), on ComfyUI versions that have them.

Sampling convention (checked against comfy/model_sampling.py ``CONST``): ComfyUI computes
``denoised = x - sigma * out`` and feeds ``timestep = sigma * 1000``; the official DiT output v
satisfies ``x0 = x + sigma * v`` (docs/pipelines.md), so the stock-sampler path returns
``out = -v``. Our own sampler asks for the raw official output through ``RAW_OUTPUT_KEY``.
"""

import functools
import importlib
import logging
import math
from collections import Counter
from pathlib import Path

import comfy.conds
import comfy.latent_formats
import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models_base
import comfy.utils
import torch
from comfy.ldm.modules.attention import optimized_attention

from ..longcat import kijai, quant, weights
from ..longcat import memory as longcat_memory
from ..longcat.block_kernels import kernels_named
from ..longcat.build import load_weights, resolve_block_kernels
from ..longcat.dit import LongCatVideoDiT
from ..longcat.options import MULTI_GPU_OPTIONS_KEY, RAW_OUTPUT_KEY
from ..longcat.scaled_fp8 import is_scale_key, weight_key
from ..longcat.schedules import NUM_TRAIN_TIMESTEPS, SHIFT
from .scaled_ops import ScaledFP8Ops, mixed_precision_ops, scaled_fp8_ops
from .text_condition import pad_text_condition

log = logging.getLogger(__name__)



def _build_dit(image_model=None, meta_init=False, dtype=None, device=None, operations=None,
               block_kernels="torch", **dit_config):
    """``unet_model`` factory for BaseModel: drops the detection keys, injects attention and the
    block kernels (``block_kernels``: their name, decided by the loader for its device).

    meta_init: build on the meta device (no memory); the loader assigns the weights.
    """
    return LongCatVideoDiT(**dit_config, attention=optimized_attention,
                           device="meta" if meta_init else device, dtype=dtype,
                           operations=operations, block_kernels=kernels_named(block_kernels))


class LongCatVideoConfig(comfy.supported_models_base.BASE):
    """Model config: what ComfyUI needs to know to build, sample and offload LongCat-Video."""

    unet_config = {"image_model": "longcat_video"}
    unet_extra_config = {}
    sampling_settings = {"shift": SHIFT, "multiplier": NUM_TRAIN_TIMESTEPS}
    latent_format = comfy.latent_formats.Wan21
    # Official inference is bf16; fp16 is unvalidated, fp32 is the fallback for old GPUs.
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    # Used only by ComfyUI's generic estimate, which LongCatVideoModel.memory_required replaces.
    memory_usage_factor = 4096 / 2222

    def get_model(self, state_dict, prefix="", device=None):
        return LongCatVideoModel(self, device=device)


class LongCatVideoModel(comfy.model_base.BaseModel):
    """BaseModel for the LongCat DiT (flow matching, ``ModelType.FLOW``)."""

    def __init__(self, model_config, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device,
                         unet_model=_build_dit)
        # Inference mode, as later ComfyUI's BaseModel sets it: comfy.ops' fp8 layers take the
        # fp8 matrix multiplication (--fast fp8_matrix_mult) only when not training, and
        # ComfyUI 0.3.64 leaves diffusion models in training mode.
        self.diffusion_model.eval()

    def longcat_lora_keys(self) -> dict:
        """LoRA key-map entries beyond ComfyUI's generic ones: Kijai's Wan-style module names,
        q / k / v (k / v) parts as row slices of the fused weights (``install_lora_key_map``)."""
        shapes = {k: tuple(v.shape) for k, v in self.diffusion_model.state_dict().items()}
        return kijai.lora_key_map(shapes, prefix="diffusion_model.")

    def memory_required(self, input_shape, cond_shapes={}, bsa=False, cached_frames=0, split=False):
        """Bytes of activations one DiT forward takes on a latent ``[B, 16, T, H, W]``
        (``longcat.memory.forward_peak_bytes``), which ComfyUI keeps free when it decides how
        much of the DiT stays on the GPU. ComfyUI's generic formula (area · factor) ignores
        BSA, the KV cache and our token chunking; it asked for ~2.5× the 480p CFG peak.

        bsa: the forward runs BSA (refine); cached_frames: leading frames of the latent held in
        a KV cache (the forward sees only the rest); split: conditioning frames without a cache.
        ComfyUI's own callers pass only the shape (dense, no cache)."""
        dit = self.diffusion_model
        _, _, frames, height, width = input_shape
        _, ph, pw = dit.patch_size
        shape = longcat_memory.ForwardShape(
            batch=input_shape[0], frames=frames - cached_frames, per_frame=(height // ph) * (width // pw),
            cached_frames=cached_frames, bsa=bsa, split=split)
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()
        itemsize = torch.empty((), dtype=dtype).element_size()
        fused = dit.blocks[0].block_kernels.name == "fused"
        return longcat_memory.forward_peak_bytes(
            shape, hidden=dit.hidden_size, heads=dit.num_heads,
            ffn_hidden=dit.blocks[0].ffn.w1.out_features, itemsize=itemsize, fused=fused)

    def get_dtype(self):
        dtype = getattr(self.diffusion_model, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
        return next(self.diffusion_model.parameters()).dtype

    def extra_conds(self, **kwargs):
        """CONDITIONING -> DiT kwargs: umT5 states padded to 512 tokens plus their mask."""
        out = {}
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            context, mask = pad_text_condition(cross_attn)
            out["c_crossattn"] = comfy.conds.CONDRegular(context)
            out["context_mask"] = comfy.conds.CONDRegular(mask)
        return out

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None,
                     transformer_options=None, **kwargs):
        """x ``[B, 16, T, H, W]``, t ``[B]`` sigmas (or, raw, 0..1000 timesteps ``[B]``/``[B, T]``)
        → ComfyUI's denoised ``[B, 16, T, H, W]`` (raw: the DiT's official output)."""
        transformer_options = {} if transformer_options is None else transformer_options
        raw = transformer_options.get(RAW_OUTPUT_KEY, False)
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()
        device = x.device
        timestep = t.float() if raw else self.model_sampling.timestep(t).float()
        context = None
        if c_crossattn is not None:
            context = comfy.model_management.cast_to_device(c_crossattn, device, dtype)
        extra = {}
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = comfy.model_management.cast_to_device(value, device, dtype)
            extra[name] = value
        runner = transformer_options.get(MULTI_GPU_OPTIONS_KEY)
        dit = self.diffusion_model if runner is None else functools.partial(runner.forward, self)
        if not raw:
            dit = _with_diffusion_model_wrappers(dit, self.diffusion_model, transformer_options)
        out = dit(x.to(dtype), timestep, context, transformer_options=transformer_options, **extra)
        if raw:
            return out
        # out is the official v; ComfyUI's CONST sampling wants -v (see module docstring).
        return self.model_sampling.calculate_denoised(t, -out.float(), x)


def _with_diffusion_model_wrappers(forward, diffusion_model, transformer_options):
    """``forward`` run through the MODEL's ``DIFFUSION_MODEL`` wrappers (EasyCache and other
    patches), as core DiTs run them in their own forward (comfy/ldm/wan/model.py); ours does it
    here because ``longcat/`` imports nothing from ComfyUI. Only on the stock-sampler path: the
    wrappers read the per-step state of ComfyUI's samplers (sigmas, uuids, their OUTER_SAMPLE
    set-up), which the LongCat nodes' own sampling (``RAW_OUTPUT_KEY``) does not provide."""
    wrappers = comfy.patcher_extension.get_all_wrappers(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options)
    if not wrappers:
        return forward
    return comfy.patcher_extension.WrapperExecutor.new_class_executor(
        forward, diffusion_model, wrappers).execute


def install_lora_key_map() -> None:
    """Let ComfyUI's LoRA loaders (``LoraLoaderModelOnly``, ``comfy.sd.load_lora_for_models``)
    map Kijai's Wan-style LoRA names onto a LongCat MODEL.

    ComfyUI builds LoRA key maps in ``comfy.lora.model_lora_keys_unet`` from isinstance checks on
    its own model classes, with no hook for other models. This wraps it once; the wrapper adds
    the entries a model offers through ``longcat_lora_keys`` (only ``LongCatVideoModel`` does)
    and leaves every other model's map unchanged.
    """
    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "longcat_wrapper", False):
        return

    @functools.wraps(original)
    def model_lora_keys_unet(model, *args, **kwargs):
        key_map = original(model, *args, **kwargs)
        extra = getattr(model, "longcat_lora_keys", None)
        if callable(extra):
            for name, target in extra().items():
                key_map.setdefault(name, target)
        return key_map

    model_lora_keys_unet.longcat_wrapper = True
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet


def _default_weight_dtype(infos: dict, load_device, supported) -> torch.dtype:
    """ComfyUI's choice for "default": from the parameter count and the file's main dtype; a
    scaled fp8 file keeps its fp8 weights (as ComfyUI does for its own scaled fp8 files), and any
    scaled file its quantized weights (fp8 stands for "quantized, the rest bf16")."""
    scaled = [infos[weight_key(k)].dtype for k in infos if is_scale_key(k)]
    if scaled:
        main = Counter(scaled).most_common(1)[0][0]
        return main if main in weights.FP8_DTYPES else torch.float8_e4m3fn
    sizes = Counter()
    for info in infos.values():
        sizes[info.dtype] += math.prod(info.shape)
    return comfy.model_management.unet_dtype(
        device=load_device, model_params=sum(sizes.values()), supported_dtypes=supported,
        weight_dtype=sizes.most_common(1)[0][0])


def _row_scaled(scale) -> bool:
    """True when a (header) scale entry gives its rows different scales: one per row, or the
    per-tensor scales of Kijai's q / k / v parts joined into one Linear."""
    parts = getattr(scale, "parts", (scale,))
    return len(parts) > 1 or any(math.prod(part.shape) > 1 for part in parts)


def _fp8_matmul_available(load_device, compute_dtype, what: str) -> bool:
    """Whether fp8 matrix multiplication can serve ``what``; says so in the log when it cannot."""
    if not comfy.model_management.supports_fp8_compute(load_device):
        log.warning("LongCat-Video %s: quantized_matmul is on, but this device has no fp8 matrix "
                    "multiplication (NVIDIA Ada, Hopper or Blackwell); its fp8 layers are dequantized "
                    "per layer and multiplied in %s (weights stay fp8 in memory)", what, compute_dtype)
        return False
    if compute_dtype != torch.bfloat16:
        log.warning("LongCat-Video %s: fp8 matrix multiplication needs bf16 compute, this model "
                    "computes in %s; its fp8 layers are dequantized per layer", what, compute_dtype)
        return False
    return True


def load_longcat_model(path, weight_dtype=None, quantized_matmul=False, block_kernels="auto"):
    """ModelPatcher around LongCat-Video weights, as ComfyUI's UNETLoader would build it.

    path: one safetensors file (official or Kijai layout, or ComfyUI's quantized format) or an
    official ``dit/`` folder (``longcat.weights``). weight_dtype: None (ComfyUI picks from the
    device and the file; quantized files stay quantized) or a torch dtype, fp8 included (stored
    in fp8, computed in bf16/fp16 through ``comfy.ops`` manual cast; a scaled fp8 file keeps its
    weights and per-row scales, see ``scaled_ops``; bf16 / fp16 / fp32 dequantize a quantized
    file on load, which needs that dtype's full memory).
    quantized_matmul: for quantized weights, False (default) dequantizes each layer while it runs
    and multiplies in the compute dtype: exact. True multiplies in the weights' format where the
    device can (fp8: Ada / Hopper / Blackwell; int8: Turing and newer; nvfp4: Blackwell):
    faster, with fp8's / int8's rounding of the activations; where it cannot, the log says so and
    those layers are dequantized as with False.
    block_kernels: "auto" (the fused block kernels where they run on ComfyUI's device and
    compute dtype, else torch ops), "fused" or "torch" (``longcat.block_kernels``).
    The DiT is built on the meta device and the loaded tensors are assigned into it, so RAM
    never holds two copies of a 13.6B model.
    """
    install_lora_key_map()
    infos, dit_config, layers = weights.inspect_quantized(path)  # headers only, validated
    dit_config["text_tokens_zero_pad"] = weights.read_text_tokens_zero_pad(path)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    keep_quantized = weight_dtype is None or weight_dtype in weights.FP8_DTYPES
    row_fp8 = [layer for layer, info in layers.items() if info.format in ("float8_e4m3fn", "float8_e5m2")
               and _row_scaled(infos[f"{layer}{weights.SCALE_SUFFIX}"])]
    if layers and keep_quantized and not row_fp8:
        patcher = _load_mixed_precision(path, infos, dit_config, layers, quantized_matmul, block_kernels,
                                        load_device, offload_device)
    else:
        if row_fp8 and keep_quantized and (packed := [k for k, v in layers.items() if v.format == "nvfp4"]):
            raise ValueError(f"{packed[0]}: nvfp4 cannot be loaded together with fp8 layers that have one "
                             f"scale per row (e.g. {row_fp8[0]})")
        patcher = _load_cast(path, infos, dit_config, weight_dtype, quantized_matmul, block_kernels,
                             load_device, offload_device)
    patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, free_rope_tables)
    return patcher


def _load_cast(path, infos, dit_config, weight_dtype, quantized_matmul, block_kernels, load_device,
               offload_device):
    """Plain, fp8-cast and scaled (per-row) weights: ``comfy.ops`` manual cast or ``scaled_ops``."""
    supported = list(LongCatVideoConfig.supported_inference_dtypes)
    if weight_dtype is None:
        weight_dtype = _default_weight_dtype(infos, load_device, supported)
    manual_cast = comfy.model_management.unet_manual_cast(weight_dtype, load_device, supported)
    kernels = resolve_block_kernels(block_kernels, load_device, manual_cast or weight_dtype, dit_config)
    config = LongCatVideoConfig({"image_model": "longcat_video", "meta_init": True, **dit_config,
                                 "block_kernels": kernels.name})
    config.set_inference_dtype(weight_dtype, manual_cast)
    state = weights.read_tensors(infos, dtype=weight_dtype)
    scale_keys = [key for key in state if is_scale_key(key)]
    if scale_keys:
        fp8_matmul = quantized_matmul and _fp8_matmul_available(load_device, manual_cast or weight_dtype,
                                                                Path(path).name)
        config.custom_operations = scaled_fp8_ops(fp8_matmul)
    model = config.get_model(state, "")
    load_weights(model.diffusion_model, state)
    model = model.to(offload_device)
    matmul = ""
    if scale_keys:
        matmul = ", fp8 matmul" if config.custom_operations is not ScaledFP8Ops else ", exact per-layer dequantization"
    log.info("LongCat-Video %s: weights %s%s, compute %s%s, block kernels %s, load %s, offload %s", path,
             weight_dtype, " (scaled, per-row scales)" if scale_keys else "", manual_cast or weight_dtype, matmul,
             kernels.name, load_device, offload_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _comfyui_version() -> str:
    try:
        import comfyui_version

        return f" {comfyui_version.__version__}"
    except ImportError:
        return ""


def _check_mixed_precision_support(path, formats) -> None:
    """One line naming the ComfyUI version needed when this ComfyUI lacks the ops for ``formats``."""
    try:  # importlib: a failed ``import comfy.quant_ops`` would leave ``comfy`` unbound here
        algos = importlib.import_module("comfy.quant_ops").QUANT_ALGOS
    except ImportError:  # ComfyUI before 0.8.0
        algos = {}
    lacking = [f for f in formats if getattr(comfy.ops, "mixed_precision_ops", None) is None or f not in algos]
    if lacking:
        needed = max((quant.COMFYUI_NEEDED[f] for f in lacking), key=lambda v: tuple(map(int, v.split("."))))
        raise ValueError(f"{Path(path).name} is quantized in ComfyUI's format ({', '.join(formats)}); this "
                         f"ComfyUI{_comfyui_version()} has no mixed-precision ops for {', '.join(lacking)}: "
                         f"update ComfyUI to {needed} or newer")


def _emulated_formats(load_device) -> set:
    """Formats whose matrix multiplication this device lacks (as ``comfy.ops.pick_operations`` decides)."""
    mm = comfy.model_management
    gates = {"float8_e4m3fn": mm.supports_fp8_compute, "float8_e5m2": mm.supports_fp8_compute,
             "nvfp4": getattr(mm, "supports_nvfp4_compute", lambda device=None: False),
             "mxfp8": getattr(mm, "supports_mxfp8_compute", lambda device=None: False)}
    return {name for name, gate in gates.items() if not gate(load_device)}


def _mixed_precision_state(infos: dict, layers: dict) -> dict:
    """State dict in ComfyUI's quantized form: per layer ``weight`` as stored, ``weight_scale``
    (scalar, or ``[out, 1]`` per row), ``comfy_quant`` and the layer's extra tensors."""
    plan = weights.plan_tensors(infos)
    for layer, info in layers.items():
        plan += [weights.PlannedTensor(f"{layer}.{name}", source, source.dtype) for name, source in info.extras.items()]
    state = dict(weights.iter_planned(plan))
    for layer, info in layers.items():
        scale_key = f"{layer}{weights.SCALE_SUFFIX}"
        if scale_key in state:
            scale = state.pop(scale_key)
            state[f"{layer}.weight_scale"] = scale.reshape(-1, 1) if _row_scaled(infos[scale_key]) else scale[0].clone()
        conf = {"format": info.format, **({"full_precision_matrix_mult": True} if info.full_precision else {})}
        state[f"{layer}.comfy_quant"] = quant.conf_tensor(conf)
    return state


def _load_mixed_precision(path, infos, dit_config, layers, quantized_matmul, block_kernels, load_device,
                          offload_device):
    """ComfyUI-format quantized layers through ComfyUI's mixed-precision ops (``comfy.ops``)."""
    formats = sorted({info.format for info in layers.values()})
    _check_mixed_precision_support(path, formats)
    supported = list(LongCatVideoConfig.supported_inference_dtypes)
    compute = comfy.model_management.unet_manual_cast(None, load_device, supported)
    kernels = resolve_block_kernels(block_kernels, load_device, compute, dit_config)
    # Not on the meta device: these ops move each loaded weight to the device they were built on.
    config = LongCatVideoConfig({"image_model": "longcat_video", **dit_config, "block_kernels": kernels.name})
    config.quant_config = {"mixed_ops": True}
    config.set_inference_dtype(compute, compute)
    emulated = _emulated_formats(load_device)
    config.custom_operations = mixed_precision_ops(compute, not quantized_matmul, emulated)
    state = _mixed_precision_state(infos, layers)
    model = config.get_model(state, "")
    load_weights(model.diffusion_model, state)
    model = model.to(offload_device)
    name = Path(path).name
    log.info("LongCat-Video %s: %d Linears quantized (%s) through ComfyUI's mixed-precision ops, the rest %s; "
             "compute %s; block kernels %s; load %s, offload %s", name, len(layers), ", ".join(formats), compute,
             compute, kernels.name, load_device, offload_device)
    slow = sorted(set(formats) & emulated) if quantized_matmul else []
    if not quantized_matmul:
        log.info("LongCat-Video %s: quantized_matmul off: each quantized layer is dequantized to %s while it "
                 "runs (exact; weights stay %s in memory)", name, compute, ", ".join(formats))
    elif slow:
        log.warning("LongCat-Video %s: this device has no %s matrix multiplication; those layers are "
                    "dequantized to %s while they run (weights stay quantized in memory, no extra memory; "
                    "slower than on a GPU that has it)", name, " / ".join(slow), compute)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def free_rope_tables(patcher) -> None:
    """ON_CLEANUP callback (end of every sampling run): drop the DiT's cached RoPE tables.

    They live on the compute device in a plain dict that ComfyUI's offload does not move or
    count (~173 MB per 720p refine grid); rebuilding them costs a fraction of one step.
    """
    patcher.model.diffusion_model.rope.clear()
