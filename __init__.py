"""ComfyUI entry point of the LongCat-Video pack.

Imports nothing at module level: ComfyUI, torch and triton are imported only when ComfyUI asks
for the node list, so the pack loads (and tests import it) without a GPU or Triton.

The nodes are V3 nodes, listed by ``comfy_entrypoint`` (ComfyUI loads those since 0.3.48), and
the DiT passes ``transformer_options`` to ComfyUI's attention functions (accepted since 0.3.60;
0.3.48 fails there mid-sampling). On an older ComfyUI the pack says in one log line which
version it needs and registers no nodes (instead of ComfyUI's "Skip ... NODE_CLASS_MAPPINGS"
warning, or an error in the middle of a run).
"""

import logging
import sys

MIN_COMFYUI = (0, 3, 60)  # first release that runs the pack (tested; 0.3.48 loads it but fails)


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
        "LongCat-Video needs ComfyUI %s or newer; this is ComfyUI %s: update ComfyUI "
        "and restart. No LongCat nodes were loaded.", ".".join(map(str, MIN_COMFYUI)), _too_old)
    NODE_CLASS_MAPPINGS = {}  # a V1 pack with no nodes: ComfyUI adds no "Skip ..." warning
else:
    async def comfy_entrypoint():
        from .nodes import LongCatExtension

        return LongCatExtension()
