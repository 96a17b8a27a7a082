"""Nodes that produce a LongCat MODEL: the model loader and the LoRA node."""

import logging
import os

import comfy.lora
import folder_paths
from comfy_api.latest import io

from ..longcat.lora import load_lora_file, to_comfy_lora_state_dict
from .weight_dtypes import WEIGHT_DTYPES, weight_dtype_option
from .model_adapter import load_longcat_model
from .runtime import check_longcat

log = logging.getLogger(__name__)

# An official ``dit/`` folder is recognised by its shard index (the Avatar INT8 copy has its own).
OFFICIAL_INDEX = "diffusion_pytorch_model.safetensors.index.json"
OFFICIAL_INDEXES = (OFFICIAL_INDEX, "quantized_model.safetensors.index.json")
_MAX_FOLDER_DEPTH = 3


def official_dit_folders() -> list[str]:
    """Folders under the ``diffusion_models`` paths holding an official sharded ``dit/``.

    Names are relative to their root with a trailing ``/`` (``LongCat-Video/dit/``), searched at
    most three levels deep so a large model folder stays quick to list.
    """
    found = []
    for root in folder_paths.get_folder_paths("diffusion_models"):
        if not os.path.isdir(root):
            continue
        for current, dirs, files in os.walk(root, followlinks=True):
            depth = os.path.relpath(current, root).count(os.sep) + (current != root)
            if any(index in files for index in OFFICIAL_INDEXES) and current != root:
                found.append(os.path.relpath(current, root).replace(os.sep, "/") + "/")
            if depth >= _MAX_FOLDER_DEPTH:
                dirs.clear()
    return sorted(set(found))


def model_choices() -> list[str]:
    """Loader choices: safetensors files in ``diffusion_models`` plus official ``dit/`` folders."""
    files = [f for f in folder_paths.get_filename_list("diffusion_models")
             if f.endswith((".safetensors", ".sft"))]
    return files + official_dit_folders()


def resolve_model_path(name: str) -> str:
    """Full path of a loader choice (file or ``dit/`` folder); ValueError if it is gone."""
    if name.endswith("/"):
        for root in folder_paths.get_folder_paths("diffusion_models"):
            path = os.path.join(root, name.rstrip("/"))
            if any(os.path.isfile(os.path.join(path, index)) for index in OFFICIAL_INDEXES):
                return path
        raise ValueError(f"model_name: official dit/ folder {name!r} not found in diffusion_models")
    return folder_paths.get_full_path_or_raise("diffusion_models", name)


class LongCatModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatModelLoader",
            display_name="Load LongCat-Video Model",
            category="LongCat",
            description="Loads the LongCat-Video DiT as a native ComfyUI MODEL (flow matching, "
                        "shift 12, Wan 2.1 latents). Works with KSampler, LoRA loaders and "
                        "model patches; use the LongCat Sampler for exact official sampling.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(),
                               tooltip="A LongCat-Video DiT .safetensors file in models/"
                                       "diffusion_models (official or Kijai layout, or quantized "
                                       "in ComfyUI's format: fp8 / int8 / nvfp4), or an official "
                                       "sharded dit/ folder (with diffusion_pytorch_model."
                                       "safetensors.index.json) placed there."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights. default: ComfyUI's choice "
                                       "for this device (bf16 on modern GPUs); a quantized file "
                                       "(Kijai's scaled fp8, ComfyUI's fp8 / int8 / nvfp4) stays "
                                       "quantized. fp8 halves the memory (~14 GB) and computes in "
                                       "bf16/fp16. bf16 / fp16 dequantize a quantized file on "
                                       "load (full memory)."),
                io.Boolean.Input("quantized_matmul", default=False, optional=True,
                                 tooltip="For quantized weights only. Off (default): each layer is "
                                         "dequantized while it runs and multiplied in bf16: exact. "
                                         "On: multiply in the weights' format where the GPU can "
                                         "(fp8: RTX 40xx / Ada, H100 / Hopper, Blackwell; int8: "
                                         "RTX 20xx and newer; nvfp4: Blackwell): faster, with a "
                                         "small extra error from rounding the activations. Where "
                                         "the GPU cannot, the console says so and the layer is "
                                         "dequantized as with Off."),
            ],
            outputs=[io.Model.Output(tooltip="The LongCat-Video DiT as a ComfyUI MODEL.")],
        )

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str, quantized_matmul: bool = False) -> io.NodeOutput:
        path = resolve_model_path(model_name)
        return io.NodeOutput(load_longcat_model(path, weight_dtype_option(weight_dtype), quantized_matmul))


class LongCatLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatLoRA",
            display_name="LongCat LoRA",
            category="LongCat",
            description="Applies a LoRA to a LongCat MODEL as ComfyUI weight patches. Reads the "
                        "official format (cfg_step_lora, refinement_lora: split up-projections, "
                        "alpha_scale) and community formats (PEFT/diffusers, ComfyUI, kohya).",
            inputs=[
                io.Model.Input("model", tooltip="A LongCat-Video MODEL."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="LoRA file in models/loras. cfg_step_lora: 16-step "
                                       "distilled sampling at guidance 1. refinement_lora: the "
                                       "720p refinement stage."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="LoRA strength; 1.0 is the official setting."),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with the LoRA patched in (a clone; the "
                                             "input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float) -> io.NodeOutput:
        check_longcat(model)
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        dit_state = model.model.diffusion_model.state_dict()
        deltas = load_lora_file(path, {k: tuple(v.shape) for k, v in dit_state.items()})
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        patches = comfy.lora.load_lora(to_comfy_lora_state_dict(deltas), key_map)
        patched = model.clone()
        applied = set(patched.add_patches(patches, strength))
        missing = sorted(k for k in patches if k not in applied)
        if missing:
            raise ValueError(f"LoRA {lora_name}: {len(missing)} targets not in the model, "
                             f"e.g. {missing[:3]}")
        log.info("LongCat LoRA %s: %d weights patched at strength %g", lora_name, len(applied),
                 strength)
        return io.NodeOutput(patched)


NODES = [LongCatModelLoader, LongCatLoRA]
