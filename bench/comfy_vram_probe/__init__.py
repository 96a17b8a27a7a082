"""Bench-only ComfyUI custom node (not part of the pack): a hard VRAM cap and peak-memory routes.

``bench/bench_comfyui_vram.py`` links this folder into the server's ``custom_nodes`` next to the
pack. ComfyUI imports custom nodes after ``comfy.model_management`` has created the CUDA context
with ComfyUI's own allocator settings (cudaMallocAsync by default), so the cap set here applies
to exactly the allocator a user's ComfyUI runs with.

* ``LONGCAT_BENCH_VRAM_GIB=<budget>``: ``torch.cuda.set_per_process_memory_fraction`` so that
  PyTorch's allocations plus what the process already holds outside PyTorch (the CUDA context)
  stay within the budget: an overshoot raises ``torch.OutOfMemoryError`` (ComfyUI reports it,
  or retries the VAE tiled) instead of borrowing the H200's spare memory.
* ``GET /bench/vram``: PyTorch's current and peak allocated / reserved bytes, the cap, and the
  models ComfyUI holds on the GPU now (``loaded`` < ``total`` bytes: partially loaded).
* ``POST /bench/vram/reset``: reset the peaks (called before each queued stage).

Without CUDA (``--cpu`` dry runs) the routes answer ``{"cuda": false}``.
"""

import logging
import os

import torch
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}  # no nodes: the module is loaded for its side effects
BUDGET_ENV = "LONGCAT_BENCH_VRAM_GIB"
log = logging.getLogger(__name__)
_cap = {}


def _cuda() -> bool:
    import comfy.model_management as mm

    return torch.cuda.is_available() and mm.get_torch_device().type == "cuda"


def _set_cap(budget_gib: float) -> dict:
    device = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(device)
    # Held outside PyTorch's allocator (CUDA context, loaded modules): counts against the card.
    outside = total - free - torch.cuda.memory_reserved(device)
    limit = int(budget_gib * 2**30) - outside
    if limit <= 0:
        raise RuntimeError(f"{BUDGET_ENV}={budget_gib}: budget is below what the process already holds")
    fraction = min(1.0, limit / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return {"budget_gib": budget_gib, "device_total": total, "outside_torch_at_start": outside,
            "torch_limit": limit, "fraction": fraction}


def _loaded_models() -> list:
    import comfy.model_management as mm

    return [{"model": type(m.model.model).__name__, "loaded": m.model_loaded_memory(),
             "total": m.model_memory()} for m in mm.current_loaded_models if m.model is not None]


def _stats() -> dict:
    if not _cuda():
        return {"cuda": False, "models": _loaded_models()}
    device = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(device)
    return {
        "cuda": True,
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
        "max_allocated": torch.cuda.max_memory_allocated(device),
        "max_reserved": torch.cuda.max_memory_reserved(device),
        "device_free": free,
        "device_total": total,
        # Held outside PyTorch now (context, loaded kernels); the GPU runs nothing else.
        "outside_torch": total - free - torch.cuda.memory_reserved(device),
        "allocator": torch.cuda.get_allocator_backend(),
        "cap": _cap,
        "models": _loaded_models(),
    }


routes = PromptServer.instance.routes


@routes.get("/bench/vram")
async def vram_stats(request):
    return web.json_response(_stats())


@routes.post("/bench/vram/reset")
async def vram_reset(request):
    error = None
    if _cuda():
        torch.cuda.synchronize()
        try:
            torch.cuda.reset_peak_memory_stats()
        except RuntimeError as err:  # an allocator without peak statistics: peaks since start
            error = str(err)
    return web.json_response({**_stats(), "reset_error": error})


if os.environ.get(BUDGET_ENV) and _cuda():
    _cap.update(_set_cap(float(os.environ[BUDGET_ENV])))
    log.info("LongCat bench VRAM cap: %s", _cap)
