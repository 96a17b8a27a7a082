"""ComfyUI entry point of the LongCat-Video pack.

Imports nothing at module level: ComfyUI, torch and triton are imported only when ComfyUI asks
for the node list, so the pack loads (and tests import it) without a GPU or Triton.
"""


async def comfy_entrypoint():
    from .nodes import LongCatExtension

    return LongCatExtension()
