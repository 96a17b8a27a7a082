"""The pack's one ComfyUI extension: every node module's NODES (test nodes only on request)."""

import logging
import os

import comfy.model_management
from comfy_api.latest import ComfyExtension, io

from . import (
    avatar,
    bsa,
    conditioning,
    loading,
    long_video,
    multigpu,
    refinement,
    sampling,
    testing,
)
from .bsa_widgets import startup_kernel_note
from . import avatar_audio, testing_audio

log = logging.getLogger(__name__)


class LongCatExtension(ComfyExtension):
    """The V3 extension ComfyUI gets from ``comfy_entrypoint``: lists the pack's nodes."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = [*loading.NODES, *bsa.NODES, *sampling.NODES, *conditioning.NODES,
                 *refinement.NODES, *long_video.NODES, *multigpu.NODES, *avatar.NODES]
        if os.environ.get(testing.TEST_NODES_ENV) == "1":
            nodes += testing.NODES
        nodes += avatar_audio.NODES
        if os.environ.get(testing.TEST_NODES_ENV) == "1":
            nodes += testing_audio.NODES
        device = comfy.model_management.get_torch_device()  # the CPU under --cpu
        log.info("LongCat-Video: %d nodes; %s", len(nodes), startup_kernel_note(device))
        return nodes
