"""LongCat BSA Settings: MODEL → MODEL carrying block-sparse attention settings."""

import logging

from comfy_api.latest import io

from ..kernels.api import BACKENDS
from ..longcat.options import BSA_OPTIONS_KEY
from .bsa_widgets import (
    CDF_WIDGET,
    PRESET_NAMES,
    SPARSITY_WIDGET,
    build_bsa_settings,
    describe_settings,
    sigma_window,
)
from .runtime import check_longcat

log = logging.getLogger(__name__)


class LongCatBSASettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatBSASettings",
            display_name="LongCat BSA Settings",
            category="LongCat",
            description="Makes the DiT's self-attention block-sparse (BSA): each 64-token query "
                        "chunk attends only to the key chunks that score highest. Official use: "
                        "the 720p refinement stage with the refinement LoRA.",
            inputs=[
                io.Model.Input("model", tooltip="A LongCat-Video MODEL."),
                io.Boolean.Input("enable", default=True,
                                 tooltip="Off: remove BSA settings from the MODEL (dense "
                                         "attention everywhere)."),
                io.Combo.Input("preset", options=list(PRESET_NAMES), default="refine 720p",
                               tooltip="refine 720p: the published setting (sparsity 0.9375, "
                                       "chunks 4x4x4) for 704x1280 refinement. base 480p: "
                                       "sparsity 0.875, chunks 4x4x4, for 480x832 stage 1 (its "
                                       "30-row token grid is padded to 32); quality not "
                                       "validated officially. custom: use the values below."),
                io.Float.Input("sparsity", default=0.9375, **SPARSITY_WIDGET,
                               tooltip="custom only: fraction of key chunks skipped per query "
                                       "chunk (keeps floor((1-s)*Nk), at least 1)."),
                io.Float.Input("cdf_threshold", default=0.0, **CDF_WIDGET,
                               tooltip="custom only: also keep the smallest set of chunks whose "
                                       "softmax score mass reaches this value (0 = off); the "
                                       "larger of the two counts wins."),
                io.String.Input("chunk_q", default="4,4,4",
                                tooltip="custom only: query chunk (t,h,w) in tokens; 64 tokens "
                                        "suit the GPU kernel best."),
                io.String.Input("chunk_k", default="4,4,4",
                                tooltip="custom only: key chunk (t,h,w) in tokens."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="BSA starts at this fraction of the schedule (0 = from "
                                       "the first step); earlier steps stay dense."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="BSA stops after this fraction of the schedule (1 = to "
                                       "the last step)."),
                io.String.Input("dense_blocks", default="",
                                tooltip="DiT blocks that always use dense attention, e.g. "
                                        "'0,1,47' or '0-3' (48 blocks, 0-based). Empty: none."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="auto: Triton kernel on CUDA, else the torch reference "
                                       "(same result, slow). triton: require the kernel "
                                       "(falls back with a warning). torch: always reference."),
            ],
            outputs=[
                io.Model.Output(tooltip="The MODEL with BSA settings (a clone)."),
                io.String.Output(display_name="report",
                                 tooltip="What BSA will do and which kernel path will run, and "
                                         "why. The sampler reports what it actually did."),
            ],
        )

    @classmethod
    def execute(cls, model, enable: bool, preset: str, sparsity: float, cdf_threshold: float,
                chunk_q: str, chunk_k: str, start_percent: float, end_percent: float,
                dense_blocks: str, backend: str) -> io.NodeOutput:
        check_longcat(model)
        percent_to_sigma = model.get_model_object("model_sampling").percent_to_sigma
        window = sigma_window(start_percent, end_percent, percent_to_sigma)
        settings = build_bsa_settings(preset, sparsity, cdf_threshold, chunk_q, chunk_k, backend,
                                      window, dense_blocks)
        patched = model.clone()
        opts = patched.model_options.setdefault("transformer_options", {})
        if enable:
            opts[BSA_OPTIONS_KEY] = settings
        else:
            opts.pop(BSA_OPTIONS_KEY, None)
        base = model.model
        compute_dtype = base.manual_cast_dtype or base.get_dtype()
        report = describe_settings(settings, enable, model.load_device, compute_dtype,
                                   base.diffusion_model.head_dim)
        log.info("LongCat BSA Settings: %s", report)
        return io.NodeOutput(patched, report)


NODES = [LongCatBSASettings]
