"""ComfyUI entry point of the LongCat-Video pack.

Imports nothing at module level: ComfyUI, torch and triton are imported only when ComfyUI asks
for the node list, so the pack loads (and tests import it) without a GPU or Triton.

The nodes are V3 nodes, listed by ``comfy_entrypoint``; ComfyUI loads those since 0.3.48. An
older ComfyUI would skip the pack with a message about NODE_CLASS_MAPPINGS, so there the pack
says in one log line which version it needs and registers no nodes.
"""

import logging
import sys

MIN_COMFYUI = (0, 3, 48)  # first release whose custom-node loader calls ``comfy_entrypoint``


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.lstrip("v").split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def comfyui_too_old() -> str | None:
    """The running ComfyUI's version when it is older than ``MIN_COMFYUI``, else None (also when
    the pack is imported outside ComfyUI: tests, scripts)."""
    version = sys.modules.get("comfyui_version")  # imported by ComfyUI's main.py at start-up
    if version is None:
        # ComfyUI before 0.3.11 has no comfyui_version; folder_paths means we are inside it.
        return "older than 0.3.11" if "folder_paths" in sys.modules else None
    text = str(getattr(version, "__version__", "0"))
    return text if _version_tuple(text) < MIN_COMFYUI else None


_too_old = comfyui_too_old()
if _too_old:
    logging.getLogger(__name__).error(
        "LongCat-Video needs ComfyUI %s or newer (V3 nodes); this is ComfyUI %s: update ComfyUI "
        "and restart. No LongCat nodes were loaded.", ".".join(map(str, MIN_COMFYUI)), _too_old)
    NODE_CLASS_MAPPINGS = {}  # a V1 pack with no nodes: ComfyUI adds no "Skip ..." warning
else:
    async def comfy_entrypoint():
        from .nodes import LongCatExtension

        return LongCatExtension()
