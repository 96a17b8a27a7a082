"""What the CUDA bench scripts share: LongCat's attention shapes, timing, peak VRAM, inputs.

Importing it registers the pack as ``longcat_pack`` (``_standalone.py``), so a script run as
``python bench/<script>.py`` imports ``longcat_pack.kernels`` after ``from _common import ...``.
"""

import math
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack

import_pack()

# Token grids (T, H, W) of LongCat's attention: 480p and 720p stage 1, the 720p refine (2× frames)
# and a long T96 grid.
GRIDS = {"480p": (24, 32, 52), "720p": (24, 44, 80), "refine": (48, 44, 80),
         "long": (96, 44, 80)}
HEADS, HEAD_DIM, CHUNK = 32, 128, (4, 4, 4)


def ms(fn):
    """Median ms; do_bench flushes L2 between reps and sizes its repeats from a first estimate."""
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def peak_mb(fn):
    """Peak VRAM of one call above what was allocated before it (MB)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def random_qkv(grid, gen=None):
    """q, k, v ``[1, HEADS, T·H·W, HEAD_DIM]`` bf16 on CUDA, standard normal, raster order."""
    return tuple(torch.randn(1, HEADS, math.prod(grid), HEAD_DIM, device="cuda",
                             dtype=torch.bfloat16, generator=gen) for _ in range(3))


def random_dit(config=None, device="cuda", dtype=torch.bfloat16, vector_std=0.02, block_kernels="auto"):
    """The LongCat DiT (published config, or ``config``) with random weights allocated directly on
    ``device`` (no CPU copy): matrices N(0, 1/fan_in), vectors (biases, norm weights) N(0, vector_std²).
    block_kernels: "auto" (what the loaders pick for ``device`` and ``dtype``), "fused" or "torch"."""
    from longcat_pack.longcat.build import resolve_block_kernels
    from longcat_pack.longcat.dit import LongCatVideoDiT

    kernels = resolve_block_kernels(block_kernels, device, dtype, config or {})
    model = LongCatVideoDiT(**(config or {}), device="meta", dtype=dtype, block_kernels=kernels)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim > 1 else vector_std)
    return model.eval()


def same_weights(model, block_kernels):
    """A second DiT on ``model``'s very tensors (shared, no copy) with other block kernels."""
    from longcat_pack.longcat.dit import LongCatVideoDiT
    from longcat_pack.longcat.weights import infer_config

    state = model.state_dict()
    twin = LongCatVideoDiT(**infer_config(state), text_tokens_zero_pad=model.text_tokens_zero_pad, device="meta",
                           block_kernels=block_kernels)
    twin.load_state_dict(state, assign=True)
    return twin.eval()
