"""The BSA Settings node's widgets → ``BSASettings``, and the plan it reports before sampling.

Presets, parsing of the text widgets, the step window, the widget limits (derived from the
kernel's own parameter check, ``kernels.api``) and the description of what will run (the
kernel's own backend decision, ``kernels.choose_backend``, for the MODEL's device and compute
dtype). Imports no ComfyUI (the CPU tests cover it without a ComfyUI tree).
"""

import math
from dataclasses import dataclass

import torch

from ..kernels import choose_backend
from ..kernels.api import CDF_THRESHOLD_RANGE, SPARSITY_RANGE
from ..longcat.bsa_settings import PUBLISHED_CHUNK, PUBLISHED_SPARSITY, BSASettings

HEAD_DIM = 128  # the published DiT's (4096 features / 32 heads)

# Widget limits, from the kernel's valid ranges: sparsity [0, 1) in steps of SPARSITY_STEP (the
# largest widget value stays below 1); cdf_threshold 0 (off) or (0, 1].
SPARSITY_STEP = 0.0005
SPARSITY_WIDGET = {"min": SPARSITY_RANGE[0], "max": SPARSITY_RANGE[1] - 2 * SPARSITY_STEP, "step": SPARSITY_STEP}
CDF_WIDGET = {"min": CDF_THRESHOLD_RANGE[0], "max": CDF_THRESHOLD_RANGE[1], "step": 0.01}

@dataclass(frozen=True)
class BSAPreset:
    """Named BSA parameters; ``None`` fields are taken from the node's widgets."""

    sparsity: float
    cdf_threshold: float | None
    chunk_3d_shape_q: tuple[int, int, int]
    chunk_3d_shape_k: tuple[int, int, int]


# "refine 720p" is the published setting (dit/config.json bsa_params), used by the official
# refinement stage at 704x1280 (token grid 44x80, divisible by 4).
# "base 480p" is our choice for 480x832 (token grid 30x52): 30 is not divisible by 4, so the
# kernel pads the H axis to 32 (padded tokens are masked). 480p has ~4.5x fewer key chunks than
# 720p, so keeping the same fraction (1/16) would leave only ~39 chunks per query; 0.875 keeps
# ~78 (1/8). Base-model quality with BSA is not validated by the official release.
BSA_PRESETS = {
    "refine 720p": BSAPreset(PUBLISHED_SPARSITY, None, PUBLISHED_CHUNK, PUBLISHED_CHUNK),
    "base 480p": BSAPreset(0.875, None, PUBLISHED_CHUNK, PUBLISHED_CHUNK),
}
PRESET_NAMES = (*BSA_PRESETS, "custom")


def parse_dense_blocks(text: str) -> frozenset[int]:
    """Parse ``"0,1,47"`` or ``"0-3, 47"`` into a set of block indices (empty text: none)."""
    blocks: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                blocks.update(range(lo, hi + 1))
            else:
                blocks.add(int(part))
        except ValueError:
            raise ValueError(
                f"dense_blocks must be comma-separated block indices or ranges like '0,1,47' "
                f"or '0-3', got {text!r} (bad part {part!r})"
            ) from None
    if any(b < 0 for b in blocks):
        raise ValueError(f"dense_blocks must be >= 0, got {text!r}")
    return frozenset(blocks)


def parse_chunk(text: str, name: str) -> tuple[int, int, int]:
    """Parse a chunk shape ``"4,4,4"`` (t, h, w) for the widget ``name``."""
    try:
        chunk = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        chunk = ()
    if len(chunk) != 3 or min(chunk) < 1:
        raise ValueError(f"{name} must be three integers >= 1 like '4,4,4', got {text!r}")
    return chunk


def sigma_window(start_percent: float, end_percent: float, percent_to_sigma) -> tuple[float, float]:
    """(sigma_max, sigma_min) for a step window given as fractions of the schedule.

    ``percent_to_sigma`` is the MODEL's ``model_sampling.percent_to_sigma``. The open ends are
    infinite so the window never excludes the first or last step through rounding.
    """
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(
            f"need 0 <= start_percent <= end_percent <= 1, got {start_percent}, {end_percent}"
        )
    sigma_max = math.inf if start_percent <= 0.0 else float(percent_to_sigma(start_percent))
    sigma_min = -math.inf if end_percent >= 1.0 else float(percent_to_sigma(end_percent))
    return sigma_max, sigma_min


def build_bsa_settings(preset: str, sparsity: float, cdf_threshold: float, chunk_q: str,
                       chunk_k: str, backend: str, window: tuple[float, float],
                       dense_blocks: str) -> BSASettings:
    """BSASettings from the BSA node's widgets; a named preset overrides the numeric widgets.

    ``cdf_threshold`` 0 means off (top-K only).
    """
    if preset not in PRESET_NAMES:
        raise ValueError(f"preset must be one of {PRESET_NAMES}, got {preset!r}")
    if preset == "custom":
        chosen = BSAPreset(sparsity, cdf_threshold if cdf_threshold > 0 else None,
                           parse_chunk(chunk_q, "chunk_q"), parse_chunk(chunk_k, "chunk_k"))
    else:
        chosen = BSA_PRESETS[preset]
    return BSASettings(
        sparsity=chosen.sparsity, cdf_threshold=chosen.cdf_threshold,
        chunk_3d_shape_q=chosen.chunk_3d_shape_q, chunk_3d_shape_k=chosen.chunk_3d_shape_k,
        backend=backend, sigma_max=window[0], sigma_min=window[1],
        dense_blocks=parse_dense_blocks(dense_blocks),
    )


def kernel_plan(backend: str, device, compute_dtype: torch.dtype, head_dim: int) -> tuple[str, str]:
    """The path BSA's kernel will take for a MODEL computing in ``compute_dtype`` on ``device``,
    and why: the kernel's own decision (``kernels.choose_backend``), with a word on what a
    fallback to the torch reference means."""
    path, why = choose_backend(backend, device, compute_dtype, head_dim)
    if path == "torch" and why != "requested":
        why += "; the torch reference gives the same results, slower"
    return path, why


def startup_kernel_note(device) -> str:
    """The start-up log's word on what BSA (backend auto) will run on ``device`` (bf16 compute)."""
    path, why = choose_backend("auto", device, torch.bfloat16, HEAD_DIM)
    if path == "triton":
        return "BSA kernel: Triton (CUDA device and Triton found)"
    if torch.device(device).type != "cuda":
        why = "no CUDA device"
    elif why.startswith("triton not importable"):
        why = "Triton not installed"
    return f"BSA kernel: torch reference, same results but slower ({why})"


def describe_settings(settings: BSASettings, enabled: bool, device, compute_dtype: torch.dtype,
                      head_dim: int = None) -> str:
    """One-paragraph plan shown by the BSA node before sampling (``device``, ``compute_dtype``:
    where and in what the MODEL's DiT computes)."""
    if not enabled:
        return "BSA disabled: every self-attention is dense."
    path, why = kernel_plan(settings.backend, device, compute_dtype, head_dim or HEAD_DIM)
    cdf = "off" if settings.cdf_threshold is None else f"{settings.cdf_threshold:g}"
    window = f"sigma in [{settings.sigma_min:g}, {settings.sigma_max:g}]"
    dense = ",".join(str(b) for b in sorted(settings.dense_blocks)) or "none"
    return (
        f"BSA enabled: sparsity {settings.sparsity:g}, cdf_threshold {cdf}, "
        f"chunk q {settings.chunk_3d_shape_q}, chunk k {settings.chunk_3d_shape_k}, "
        f"{window}, dense blocks {dense}. Kernel: {path} ({why}). Self-attention with one "
        f"latent frame (images) and cross-attention stay dense; grids not divisible by the "
        f"chunk are padded and the padding is masked."
    )
