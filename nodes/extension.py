"""The pack's one ComfyUI extension: every node module's NODES (test nodes only on request)."""

import logging
import os

import comfy.model_management
from comfy_api.latest import ComfyExtension, io

from . import (
    bsa,
    conditioning,
    loading,
    long_video,
    multigpu,
    refinement,
    sampling,
    testing,
)
from .logic import startup_kernel_note, triton_available

log = logging.getLogger(__name__)


class LongCatExtension(ComfyExtension):
    """The V3 extension ComfyUI gets from ``comfy_entrypoint``: lists the pack's nodes."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = [*loading.NODES, *bsa.NODES, *sampling.NODES, *conditioning.NODES,
                 *refinement.NODES, *long_video.NODES, *multigpu.NODES]
        if os.environ.get(testing.TEST_NODES_ENV) == "1":
            nodes += testing.NODES
        cuda = comfy.model_management.get_torch_device().type == "cuda"  # --cpu included
        log.info("LongCat-Video: %d nodes; %s", len(nodes), startup_kernel_note(cuda, triton_available()))
        return nodes
