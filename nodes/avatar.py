"""LongCat-Video-Avatar nodes: the model loader, the sampler (text + audio guidance) and the
extension node for long videos. The math is in ``longcat/avatar``; these nodes only turn ComfyUI
inputs into its arguments. The audio embeds come from LongCat Avatar Audio Embeds
(``LONGCAT_AUDIO_EMBEDS``, ``longcat/avatar/embeds.py``)."""

import logging

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io

from ..longcat.avatar.dit import LongCatAvatarDiT
from ..longcat.avatar.embeds import VERSIONS, default_speaker_masks
from ..longcat.avatar.sampling import (
    OVERLAP_FRAMES,
    Reference,
    avatar_denoise,
    dmd_sigmas,
    extend_segment,
    fit_image,
    resize_masks,
)
from ..longcat.avatar.weights import (
    avatar_version,
    inspect_avatar_checkpoint,
    read_avatar_tensors,
)
from ..longcat.block_kernels import kernels_named
from ..longcat.build import resolve_block_kernels
from ..longcat.frames import check_size
from ..longcat.pipelines import make_noise
from ..longcat.schedules import SHIFT, enhance_hf_sigmas, normal_sigmas
from .loading import model_choices, resolve_model_path
from .model_adapter import (
    LongCatVideoConfig,
    LongCatVideoModel,
    _default_weight_dtype,
    free_rope_tables,
    install_lora_key_map,
)
from .runtime import VaeCodec, loaded_model, progress_callback, text_condition
from .weight_dtypes import WEIGHT_DTYPES, weight_dtype_option

log = logging.getLogger(__name__)

AudioEmbeds = io.Custom("LONGCAT_AUDIO_EMBEDS")
AVATAR_KEY = "longcat_avatar"  # LATENT entry: what the extension node needs from the previous segment
SCHEDULES = ("dmd", "normal", "enhance_hf")


def _build_avatar_dit(image_model=None, meta_init=False, dtype=None, device=None, operations=None,
                      block_kernels="torch", **config):
    return LongCatAvatarDiT(**config, attention=optimized_attention, device="meta" if meta_init else device,
                            dtype=dtype, operations=operations, block_kernels=kernels_named(block_kernels))


class LongCatAvatarConfig(LongCatVideoConfig):
    unet_config = {"image_model": "longcat_avatar"}

    def get_model(self, state_dict, prefix="", device=None):
        return LongCatAvatarModel(self, device=device)


class LongCatAvatarModel(LongCatVideoModel):
    """The Avatar DiT as a ComfyUI MODEL (LongCat LoRA, BSA Settings and the LongCat runtime
    apply to it as to the base model); sample it with LongCat Avatar Sampler."""

    def __init__(self, model_config, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, comfy.model_base.ModelType.FLOW, device=device,
                                            unet_model=_build_avatar_dit)
        self.diffusion_model.eval()


def load_avatar_model(path, weight_dtype=None):
    """ModelPatcher around Avatar weights (official folders, INT8 copy or one file), built as
    ``model_adapter.load_longcat_model`` builds the base model."""
    install_lora_key_map()
    infos, dit_config = inspect_avatar_checkpoint(path)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    supported = list(LongCatAvatarConfig.supported_inference_dtypes)
    if weight_dtype is None:
        weight_dtype = (torch.bfloat16 if any(i.dtype == torch.int8 for i in infos.values())
                        else _default_weight_dtype(infos, load_device, supported))
    manual_cast = comfy.model_management.unet_manual_cast(weight_dtype, load_device, supported)
    kernels = resolve_block_kernels("auto", load_device, manual_cast or weight_dtype, dit_config)
    config = LongCatAvatarConfig({"image_model": "longcat_avatar", "meta_init": True, **dit_config,
                                  "block_kernels": kernels.name})
    config.set_inference_dtype(weight_dtype, manual_cast)
    state = read_avatar_tensors(infos, dtype=weight_dtype)
    model = config.get_model(state, "")
    model.diffusion_model.load_state_dict(state, strict=True, assign=True)
    model = model.to(offload_device)
    log.info("LongCat-Video-Avatar %s (%s): weights %s, compute %s", path, avatar_version(dit_config),
             weight_dtype, manual_cast or weight_dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, free_rope_tables)
    return patcher


def check_avatar(model) -> LongCatAvatarDiT:
    if not isinstance(getattr(model, "model", None), LongCatAvatarModel):
        raise TypeError("model must come from 'Load LongCat-Video-Avatar Model', got "
                        f"{type(getattr(model, 'model', model)).__name__}")
    return model.model.diffusion_model


def check_embeds(dit: LongCatAvatarDiT, embeds) -> None:
    """One line when the audio features do not fit this DiT (the other Avatar version)."""
    have = tuple(embeds.windows.shape[3:])
    want = (dit.audio_layers, dit.audio_channels)
    if have != want:
        names = {(layers, channels): f"Avatar {v}" for v, (layers, channels, _) in VERSIONS.items()}
        raise ValueError(f"audio_embeds are {have[0]}x{have[1]} ({names.get(have, 'unknown encoder')}) but this "
                         f"DiT takes {want[0]}x{want[1]} ({names.get(want, 'a custom size')}): load the matching "
                         "audio encoder (whisper-large-v3 for 1.5, chinese-wav2vec2-base for 1.0)")


def _sigmas(schedule: str, steps: int, shift: float) -> torch.Tensor:
    if schedule == "dmd":
        return dmd_sigmas(shift)
    return enhance_hf_sigmas(steps, shift) if schedule == "enhance_hf" else normal_sigmas(steps, shift)


def _speaker_masks(embeds, height, width, image_size):
    """Speaker masks at the video size, or None for one speaker."""
    if embeds.windows.shape[0] == 1:
        return None
    masks = embeds.masks
    if masks is None:
        if image_size is None:
            raise ValueError("two speakers need a reference image (image input) for their default left/right masks")
        masks = default_speaker_masks(*image_size)
    elif image_size is not None and abs(masks.shape[1] / masks.shape[2] - image_size[0] / image_size[1]) > 0.02:
        raise ValueError(f"speaker masks (LongCat Avatar Audio Embeds) are {masks.shape[2]}x{masks.shape[1]}, "
                         f"not the reference image's aspect ratio {image_size[1]}x{image_size[0]}")
    return resize_masks(masks, height, width)


def _guidance_inputs():
    return [
        io.Combo.Input("schedule", options=list(SCHEDULES), default="dmd",
                       tooltip="dmd: the 1.5 DMD LoRA's 8 steps (use text_cfg = audio_cfg = 1). normal: "
                               "shifted linspace, 50 steps with text_cfg 4 / audio_cfg 4 (1.0). enhance_hf: "
                               "the 1.0 continuation schedule (50 → 56 steps)."),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip="normal / enhance_hf steps (dmd is always 8)."),
        io.Float.Input("shift", default=SHIFT, min=0.01, max=100.0, step=0.01,
                       tooltip="Static flow shift. 12 is the base LongCat value (used by 1.0); the 1.5 "
                               "scheduler's value is not published in code (a third-party port uses 7)."),
        io.Float.Input("text_cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                       tooltip="Text guidance: 4 for 50-step sampling, 1 with the DMD LoRA."),
        io.Float.Input("audio_cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                       tooltip="Audio guidance (an extra pass with zero audio features): 4 for 1.0; "
                               "3-5 for 1.5 without DMD; 1 with the DMD LoRA."),
        io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed (CPU generator)."),
    ]


def _common_inputs():
    return [
        io.Model.Input("model", tooltip="A MODEL from Load LongCat-Video-Avatar Model (LoRA / BSA nodes may sit "
                                        "in between)."),
        io.Conditioning.Input("positive", tooltip="Prompt from CLIPTextEncode (umT5, CLIPLoader type 'wan'); "
                                                  "long descriptive prompts work best."),
        AudioEmbeds.Input("audio_embeds", tooltip="From LongCat Avatar Audio Embeds."),
        io.Vae.Input("vae", tooltip="The Wan 2.1 VAE."),
    ]


def _run(model, dit, shape, guided, multi, positive, negative, fn):
    batch = 1 if multi or not guided else 2
    with loaded_model(model, shape, batch) as (dit_fn, device, bsa_log):
        pos = text_condition(positive, device)
        neg = None if negative is None else text_condition(negative, device)
        if guided and neg is None:
            raise ValueError("negative is required when text_cfg or audio_cfg is above 1")
        out = fn(dit_fn, device, pos, neg)
    return out, bsa_log.summary()


class LongCatAvatarModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatAvatarModelLoader",
            display_name="Load LongCat-Video-Avatar Model",
            category="LongCat/Avatar",
            description="Loads the LongCat-Video-Avatar DiT (1.5 base_model/ or its INT8 copy, 1.0 avatar_single/ "
                        "or avatar_multi/, or one .safetensors file in the official naming) as a MODEL.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(),
                               tooltip="A file or an official sharded folder under models/diffusion_models."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype; the INT8 copy is dequantized to bf16 (default)."),
            ],
            outputs=[io.Model.Output(tooltip="The Avatar DiT as a MODEL.")],
        )

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str) -> io.NodeOutput:
        return io.NodeOutput(load_avatar_model(resolve_model_path(model_name), weight_dtype_option(weight_dtype)))


class LongCatAvatarSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatAvatarSampler",
            display_name="LongCat Avatar Sampler",
            category="LongCat/Avatar",
            description="The first segment of an Avatar video: audio (+ text, + an optional reference image) "
                        "to video, with the official three-pass guidance "
                        "v = u + text_cfg·(c − u_text) + audio_cfg·(u_text − u).",
            inputs=[
                *_common_inputs(),
                io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip="480p: 832x480; 720p: 1280x768."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="Video height in pixels (multiple of 16)."),
                io.Int.Input("num_frames", default=93, min=5, max=1001, step=4,
                             tooltip="Frames of this segment (1 + 4k; the official segment is 93)."),
                *_guidance_inputs(),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt; required when a cfg is above 1."),
                io.Image.Input("image", optional=True,
                               tooltip="Reference image (becomes latent 0; cover-resized and centre-cropped). "
                                       "Required for two speakers."),
            ],
            outputs=[
                io.Latent.Output(tooltip="The segment's latent; decode with VAEDecode, or feed LongCat Avatar "
                                         "Extend for the next segment."),
                io.String.Output(display_name="bsa_report", tooltip="What block-sparse attention did."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, audio_embeds, vae, width, height, num_frames, schedule, steps, shift,
                text_cfg, audio_cfg, seed, negative=None, image=None) -> io.NodeOutput:
        dit = check_avatar(model)
        check_embeds(dit, audio_embeds)
        check_size(height, width)
        if (num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4k (e.g. 93), got {num_frames}")
        audio = audio_embeds.segment(0, num_frames)
        masks = _speaker_masks(audio_embeds, height, width, None if image is None else tuple(image.shape[1:3]))
        latent_format = model.model.latent_format
        shape = (1, 16, 1 + (num_frames - 1) // 4, height // 8, width // 8)
        noise = make_noise(shape, torch.Generator("cpu").manual_seed(seed))
        sigmas = _sigmas(schedule, steps, shift)
        guided = text_cfg > 1 or audio_cfg > 1

        def sample(dit_fn, device, pos, neg):
            x = noise.to(device)
            if image is not None:
                codec = VaeCodec(vae, latent_format, device)
                x[:, :, :1] = codec.encode(fit_image(image[:1], height, width))
            return avatar_denoise(dit_fn, x, sigmas, pos, audio.to(device), neg, text_cfg, audio_cfg,
                                  num_cond_latents=int(image is not None),
                                  speaker_masks=None if masks is None else masks.to(device),
                                  callback=progress_callback(model, len(sigmas) - 1))

        out, report = _run(model, dit, shape, guided, masks is not None, positive, negative, sample)
        raw = latent_format.process_out(out).to(comfy.model_management.intermediate_device())
        meta = {"ref": raw[:, :, :1].clone(), "end_frame": num_frames, "frames": num_frames, "masks": masks}
        return io.NodeOutput({"samples": raw, AVATAR_KEY: meta}, report)


class LongCatAvatarExtend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatAvatarExtend",
            display_name="LongCat Avatar Extend",
            category="LongCat/Avatar",
            description="The next segment of a long Avatar video: 13 frames of overlap with the previous one "
                        "(1.0: its last 4 latents; 1.5: the VAE re-encode of its last 13 frames), the first "
                        "segment's latent 0 as the fixed reference, the audio 80 frames further on.",
            inputs=[
                *_common_inputs(),
                io.Latent.Input("previous_latent", tooltip="From LongCat Avatar Sampler or a previous Extend."),
                io.Image.Input("previous_images", tooltip="The previous segment's decoded frames (its last 13 "
                                                          "are the overlap)."),
                *_guidance_inputs(),
                io.Int.Input("ref_index", default=10, min=-100, max=100,
                             tooltip="RoPE time position of the reference (official 10; 0-24 for consistency, "
                                     "30 or -10 against repeated actions)."),
                io.Int.Input("mask_frame_range", default=3, min=0, max=50,
                             tooltip="Noise latents within this range of ref_index do not attend to the "
                                     "reference (official 3)."),
                io.Boolean.Input("use_kv_cache", default=True,
                                 tooltip="Compute the reference and overlap keys/values once (same result)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt; required when a cfg is above 1."),
            ],
            outputs=[
                io.Latent.Output(tooltip="This segment's latent (overlap latents first); feed the next Extend."),
                io.Image.Output(display_name="new_frames", tooltip="The new frames (overlap dropped): append them "
                                                                   "to the video with ImageBatch."),
                io.String.Output(display_name="bsa_report", tooltip="What block-sparse attention did."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, audio_embeds, vae, previous_latent, previous_images, schedule, steps, shift,
                text_cfg, audio_cfg, seed, ref_index, mask_frame_range, use_kv_cache, negative=None) -> io.NodeOutput:
        dit = check_avatar(model)
        check_embeds(dit, audio_embeds)
        meta = previous_latent.get(AVATAR_KEY)
        if meta is None:
            raise ValueError("previous_latent must come from LongCat Avatar Sampler or LongCat Avatar Extend")
        frames = meta["frames"]
        start = meta["end_frame"] - OVERLAP_FRAMES
        audio = audio_embeds.segment(start, frames)
        latent_format = model.model.latent_format
        previous = latent_format.process_in(previous_latent["samples"].float())
        shape = (1, 16, 1 + (frames - 1) // 4, *previous.shape[3:])
        sigmas = _sigmas(schedule, steps, shift)
        masks = meta["masks"]
        guided = text_cfg > 1 or audio_cfg > 1

        def sample(dit_fn, device, pos, neg):
            codec = VaeCodec(vae, latent_format, device)
            reference = Reference(latent_format.process_in(meta["ref"].float()).to(device), ref_index,
                                  mask_frame_range)
            out = extend_segment(dit_fn, codec.encode, previous_images, previous.to(device), reference, pos,
                                 audio.to(device), audio_embeds.version, sigmas, neg, text_cfg, audio_cfg,
                                 speaker_masks=None if masks is None else masks.to(device),
                                 use_kv_cache=use_kv_cache, generator=torch.Generator("cpu").manual_seed(seed),
                                 callback=progress_callback(model, len(sigmas) - 1))
            return out, codec.decode(out)[OVERLAP_FRAMES:]

        (out, new_frames), report = _run(model, dit, shape, guided, masks is not None, positive, negative, sample)
        raw = latent_format.process_out(out).to(comfy.model_management.intermediate_device())
        new_meta = {**meta, "end_frame": start + frames}
        return io.NodeOutput({"samples": raw, AVATAR_KEY: new_meta},
                             new_frames.to(comfy.model_management.intermediate_device()), report)


NODES = [LongCatAvatarModelLoader, LongCatAvatarSampler, LongCatAvatarExtend]
