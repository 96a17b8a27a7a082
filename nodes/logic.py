"""Node-level logic that needs no ComfyUI: option tables, parsing, text padding, BSA reporting.

The node modules next to this one import ComfyUI; this one imports only torch and the model
package, so the CPU tests cover everything here without a ComfyUI tree.
"""

import importlib.util
import math
from collections import Counter
from dataclasses import dataclass

import torch

from ..longcat import schedules
from ..longcat.bsa_settings import PUBLISHED_CHUNK, PUBLISHED_SPARSITY, BSASettings
from ..longcat.convert import DTYPE_NAMES
from ..longcat.frames import (
    LATENT_CHANNELS,
    REFINE_MULTIPLE,
    check_size,
    latent_frames,
    latent_shape,
    refine_plan,
)
from ..longcat.long_video import refine_windows

# umT5 sequence length the official pipeline pads every prompt to.
TEXT_TOKENS = 512

# The loader widget's choices: "default" plus names of convert.DTYPE_NAMES (the converter's --dtype).
WEIGHT_DTYPES = ("default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2")

# Key under which a LATENT carries how many leading latent frames are clean conditioning.
COND_LATENTS_KEY = "longcat_num_cond_latents"


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


def weight_dtype_option(name: str) -> torch.dtype | None:
    """Map the loader's ``weight_dtype`` widget to a torch dtype (None = ComfyUI's choice)."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {name!r}")
    return None if name == "default" else DTYPE_NAMES[name]


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


def triton_available() -> bool:
    """Whether Triton can be imported, checked without importing it."""
    return importlib.util.find_spec("triton") is not None


def expected_backend(backend: str, cuda: bool, triton: bool) -> tuple[str, str]:
    """Which kernel path BSA will take for ``backend`` on this machine, and why."""
    if backend == "torch":
        return "torch", "torch reference requested"
    if backend == "triton":
        if not (cuda and triton):
            # kernels.block_sparse_attention then warns and runs the reference; it never fails.
            missing = "CUDA" if not cuda else "Triton"
            return "torch", (f"Triton backend requested but {missing} is not available: falls "
                             f"back to the torch reference (slow, same results)")
        return "triton", "Triton requested, CUDA and Triton available"
    if cuda and triton:
        return "triton", "auto: CUDA and Triton available"
    missing = "no CUDA device" if not cuda else "Triton not installed"
    return "torch", f"auto: {missing}, using the torch reference (slow, same results)"


def startup_kernel_note(cuda: bool, triton: bool) -> str:
    """The start-up log's word on what BSA (backend auto) will run on this machine."""
    path, _ = expected_backend("auto", cuda, triton)
    if path == "triton":
        return "BSA kernel: Triton (CUDA device and Triton found)"
    missing = "no CUDA device" if not cuda else "Triton not installed"
    return f"BSA kernel: torch reference, same results but slower ({missing})"


def describe_settings(settings: BSASettings, enabled: bool, cuda: bool, triton: bool) -> str:
    """One-paragraph plan shown by the BSA node before sampling."""
    if not enabled:
        return "BSA disabled: every self-attention is dense."
    path, why = expected_backend(settings.backend, cuda, triton)
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


class BSARunLog:
    """Per-run record of what BSA did; the DiT calls ``record`` after each BSA call.

    Keeps running aggregates only. Numbers stay tensors on the kernel's device until
    ``summary`` reads them, so recording never waits on the GPU (one sync per run, not per call).
    """

    def __init__(self):
        self.calls = 0
        self.blocks = set()
        self.paths = Counter()
        self.padded = 0
        self.key_chunks = set()
        self.kept_count = 0
        self._density = None  # tensors: sum, min, max over calls
        self._kept = None  # tensors: sum, min, max of key chunks kept per query chunk

    def record(self, block_index, report) -> None:
        """Add one ``kernels.BSAReport`` from DiT block ``block_index``."""
        self.calls += 1
        if block_index is not None:
            self.blocks.add(int(block_index))
        self.paths[(report.backend, report.reason)] += 1
        self.padded += bool(report.padded)
        self.key_chunks.add(int(report.num_key_chunks))
        density = report.kept_key_tokens.double().mean() / report.num_key_tokens
        kept = report.blocks_per_query_chunk.double()
        self.kept_count += kept.numel()
        self._density = _accumulate(self._density, density, density, density)
        self._kept = _accumulate(self._kept, kept.sum(), kept.min(), kept.max())

    def summary(self) -> str:
        """Readable summary: calls, blocks, density, kept chunks, kernel paths and reasons."""
        if self.calls == 0:
            return ("BSA: no block-sparse attention ran (disabled, no BSA settings on the MODEL, "
                    "one latent frame, or every step/block outside the window).")
        nk = ",".join(str(n) for n in sorted(self.key_chunks))
        density_sum, density_min, density_max = (float(t) for t in self._density)
        kept_sum, kept_min, kept_max = (float(t) for t in self._kept)
        lines = [
            f"BSA: {self.calls} sparse self-attention calls over {len(self.blocks)} blocks.",
            f"density (kept key tokens / key tokens): mean {density_sum / self.calls:.4f}, "
            f"min {density_min:.4f}, max {density_max:.4f}.",
            f"kept key chunks per query chunk: mean {kept_sum / max(self.kept_count, 1):.1f}, "
            f"min {kept_min:.0f}, max {kept_max:.0f} (of {nk} key chunks).",
            f"padded grids: {self.padded} of {self.calls} calls.",
        ]
        for (backend, reason), count in sorted(self.paths.items()):
            lines.append(f"kernel {backend} x{count}: {reason}")
        return "\n".join(lines)


def _accumulate(totals, add, low, high):
    """Running (sum, min, max) of device tensors, without reading them back."""
    if totals is None:
        return add, low, high
    return totals[0] + add, torch.minimum(totals[1], low), torch.maximum(totals[2], high)


def pad_text_condition(context: torch.Tensor, tokens: int = TEXT_TOKENS):
    """ComfyUI umT5 output -> the DiT's (context, mask), as the official pipeline gives them.

    context: ``[B, L, C]`` from ``CLIPTextEncode`` with CLIP type ``wan``; ComfyUI pads the
    prompt to at least 512 tokens and zeroes the padded positions, and carries no mask.
    Returns ``([B, tokens, C], [B, tokens])``: real tokens are the non-zero rows (a real umT5
    state is never exactly zero), the rest is zero-padded or cut to ``tokens`` (the official
    tokenizer truncates at 512). The mask is 1.0 for real tokens; with ``text_tokens_zero_pad``
    the DiT zeroes the masked positions after its caption MLP and attends to all 512.
    """
    if context.ndim != 3:
        raise ValueError(f"context must be [B, L, C], got shape {tuple(context.shape)}")
    length = context.shape[1]
    if length >= tokens:
        context = context[:, :tokens]
    else:
        context = torch.nn.functional.pad(context, (0, 0, 0, tokens - length))
    mask = (context != 0).any(dim=-1).to(context.dtype)
    return context, mask


SCHEDULES = ("normal", "distill", "enhance_hf", "refine")


def schedule_sigmas(mode: str, steps: int, t_thresh: float, shift: float) -> torch.Tensor:
    """The official sigma list (terminal 0 included) for the Scheduler node's ``mode``."""
    if mode == "normal":
        return schedules.normal_sigmas(steps, shift)
    if mode == "distill":
        return schedules.distill_sigmas(steps, shift)
    if mode == "enhance_hf":
        return schedules.enhance_hf_sigmas(steps, shift)
    if mode == "refine":
        return schedules.refine_sigmas(steps, t_thresh, shift)
    raise ValueError(f"mode must be one of {SCHEDULES}, got {mode!r}")


def start_latents(latent: torch.Tensor, noise: torch.Tensor, sigma: float, num_cond: int,
                  process_in) -> torch.Tensor:
    """Normalized start point of a run: clean cond frames, then ``σ·noise + (1−σ)·x0``.

    latent: raw LATENT samples ``[B, 16, T, h, w]`` (cond frames first); noise: same shape, on
    any device (drawn on the CPU; moved to ``latent``'s device, which is the GPU for LATENTs made
    under ``--gpu-only``). An all-zero (empty) noise part counts as x0 = 0, as ComfyUI treats
    empty latents; at sigma = 1 the noise part is exactly the noise. process_in: the latent
    format's normalizer. Returns ``[B, 16, T, h, w]`` on ``latent``'s device.
    """
    if latent.ndim != 5 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"latent must be [B, {LATENT_CHANNELS}, T, h, w] (a Wan 2.1 video latent, "
                         f"e.g. EmptyHunyuanLatentVideo), got {tuple(latent.shape)}")
    if latent.shape != noise.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match latent {tuple(latent.shape)}")
    noise = noise.to(latent.device)
    if not 0 <= num_cond < latent.shape[2]:
        raise ValueError(f"{COND_LATENTS_KEY} must be in [0, T={latent.shape[2]}), got {num_cond}")
    cond, rest = latent[:, :, :num_cond], latent[:, :, num_cond:]
    x0 = process_in(rest) if torch.count_nonzero(rest) > 0 else torch.zeros_like(rest)
    noised = sigma * noise[:, :, num_cond:] + (1.0 - sigma) * x0 if sigma < 1.0 else noise[:, :, num_cond:]
    return torch.cat([process_in(cond), noised.to(cond.dtype)], dim=2)


def cond_latent_dict(cond_raw: torch.Tensor, total_latents: int) -> dict:
    """LATENT with ``cond_raw`` ``[1, 16, Tc, h, w]`` (raw VAE latents) in front of empty frames."""
    if cond_raw.ndim != 5:
        raise ValueError(f"conditioning latents must be [1, 16, Tc, h, w], got {tuple(cond_raw.shape)}")
    tc = cond_raw.shape[2]
    if not 0 < tc < total_latents:
        raise ValueError(f"length gives {total_latents} latent frames; it must exceed the {tc} "
                         f"conditioning latent frames")
    samples = torch.zeros(cond_raw.shape[:2] + (total_latents,) + cond_raw.shape[3:],
                          dtype=torch.float32, device=cond_raw.device)
    samples[:, :, :tc] = cond_raw.float()
    return {"samples": samples, COND_LATENTS_KEY: tc}


@dataclass(frozen=True)
class LongVideoSettings:
    """The LongCat Long Video node's widgets; sigmas None = the official 50-step schedules."""

    num_segments: int
    width: int
    height: int
    num_frames: int
    num_cond_frames: int
    guidance_scale: float
    seed: int
    use_kv_cache: bool
    t_thresh: float
    refine_width: int
    refine_height: int
    t2v_sigmas: torch.Tensor | None = None
    vc_sigmas: torch.Tensor | None = None

    def __post_init__(self):
        # Checked here so a bad value fails before stage 1 runs, not minutes into it.
        if not 1 <= self.num_cond_frames < self.num_frames:
            raise ValueError(f"num_cond_frames must be in [1, num_frames={self.num_frames}), "
                             f"got {self.num_cond_frames}")
        check_size(self.height, self.width)
        check_size(self.refine_height, self.refine_width, REFINE_MULTIPLE)

    @property
    def stage1_frames(self) -> int:
        """Frames of the whole stage-1 video: the first clip plus each segment's new frames."""
        return self.num_frames + self.num_segments * (self.num_frames - self.num_cond_frames)

    def stage1_latent_shape(self) -> tuple[int, ...]:
        """Latent ``[1, 16, T, h, w]`` of one stage-1 clip (one DiT forward without CFG)."""
        return latent_shape(latent_frames(self.num_frames), self.height, self.width)

    def refine_latent_shape(self) -> tuple[int, ...]:
        """Largest latent ``[1, 16, T, h, w]`` of a refinement window, at the refine size.

        The first window has no conditioning, later ones hold the previous window's last
        ``2·num_cond_frames`` refined frames; both are padded as ``refine_plan`` says.
        """
        latents = max(refine_plan(self.num_frames, held).latent_frames
                      for held in (0, 2 * self.num_cond_frames))
        return latent_shape(latents, self.refine_height, self.refine_width)

    def total_steps(self, t2v_steps: int, vc_steps: int, refine_steps: int | None) -> int:
        """DiT loop steps of the whole run (one progress bar over all of them)."""
        steps = t2v_steps + self.num_segments * vc_steps
        if refine_steps is not None:
            windows = refine_windows(self.stage1_frames, self.num_frames, self.num_cond_frames)
            steps += len(windows) * refine_steps
        return steps
