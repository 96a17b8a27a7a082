"""Public entry point of the kernels layer: ``block_sparse_attention`` and its ``BSAReport``.

Validates the call, picks the backend (recording why), and runs the custom op
``longcat_bsa::forward`` (kernels/op.py): on Triton with grids divisible by their chunks it reads
q and writes o in raster order, with only K/V copied into chunk order (kernels/reorder_triton.py,
kernels/gating_triton.py, kernels/bsa_fwd_triton.py, imported lazily); otherwise it reorders tokens into padded 3D chunks
(kernels/chunking.py), gates (kernels/gating.py), runs the Triton kernel or the torch reference
(kernels/reference.py), and restores the caller's token order. Everything here is static Python
on shapes, dtypes and devices, so ``torch.compile(fullgraph=True)`` traces it with the op as one node.

Imports torch only at module level; must not import the model package or ComfyUI.
"""

import logging
from dataclasses import dataclass

import torch

from .chunking import check_triple, make_layout
from .op import bsa_forward_op

logger = logging.getLogger(__name__)

# The BSA parameters' valid values, checked once here (``check_parameters``): by the kernel on
# every call, by ``longcat.bsa_settings.BSASettings`` when a node builds settings; the BSA node's
# widget limits are derived from them.
BACKENDS = ("auto", "triton", "torch")
SPARSITY_RANGE = (0.0, 1.0)  # [low, high): 1 would keep no key chunk
CDF_THRESHOLD_RANGE = (0.0, 1.0)  # (low, high]
# Fallback reasons already logged: a DiT makes thousands of BSA calls per run, and the report
# of every call carries the reason anyway, so each distinct reason is logged once per process.
_warned_fallbacks: set[str] = set()


def _warn_fallback_once(reason: str) -> None:
    if reason not in _warned_fallbacks:
        _warned_fallbacks.add(reason)
        logger.warning("BSA: triton backend requested but %s; using the torch reference", reason)


@dataclass
class BSAReport:
    """What one ``block_sparse_attention`` call did.

    Attributes:
        backend: "triton" or "torch" — the path that ran.
        reason: why that path ran (e.g. "requested", "CUDA and triton available",
            "triton not importable: ...", "head_dim 96 not supported by the Triton kernel ...").
        blocks_per_query_chunk: int32 ``[B, heads, Nq]`` key chunks kept per query chunk.
        kept_key_tokens: int32 ``[B, heads, Nq]`` real key tokens kept per query chunk.
        num_query_chunks: Nq.
        num_key_chunks: Nk.
        num_key_tokens: Sk, the real key tokens.
        padded: whether either grid was padded to a multiple of its chunk.
        density (property): kept real key tokens / real key tokens, averaged over batch, heads
            and query chunks (0 < density ≤ 1).

    Built from the op's output tensors; ``density`` reads them (a device sync) only when asked,
    so neither the call nor a compiled graph waits on the GPU.
    """

    backend: str
    reason: str
    blocks_per_query_chunk: torch.Tensor
    kept_key_tokens: torch.Tensor
    num_query_chunks: int
    num_key_chunks: int
    num_key_tokens: int
    padded: bool

    @property
    def density(self) -> float:
        return float(self.kept_key_tokens.double().mean()) / self.num_key_tokens


def check_parameters(sparsity, cdf_threshold, backend="auto", chunk_q=(4, 4, 4), chunk_k=(4, 4, 4)):
    """ValueError naming the parameter unless the BSA parameters are valid; returns the chunks as
    int tuples. sparsity in [0, 1) or None, cdf_threshold in (0, 1] or None (not both None),
    backend one of ``BACKENDS``, chunks three ints >= 1."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if sparsity is None and cdf_threshold is None:
        raise ValueError("sparsity and cdf_threshold cannot both be None")
    for name, value in (("sparsity", sparsity), ("cdf_threshold", cdf_threshold)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{name} must be a float or None, got {value!r}")
    if sparsity is not None and not SPARSITY_RANGE[0] <= sparsity < SPARSITY_RANGE[1]:
        raise ValueError(f"sparsity must be in [{SPARSITY_RANGE[0]:g}, {SPARSITY_RANGE[1]:g}), got {sparsity!r}")
    if cdf_threshold is not None and not CDF_THRESHOLD_RANGE[0] < cdf_threshold <= CDF_THRESHOLD_RANGE[1]:
        raise ValueError(f"cdf_threshold must be in ({CDF_THRESHOLD_RANGE[0]:g}, {CDF_THRESHOLD_RANGE[1]:g}], "
                         f"got {cdf_threshold!r}")
    return check_triple("chunk_3d_shape_q", chunk_q), check_triple("chunk_3d_shape_k", chunk_k)


def _check_inputs(q, k, v, sparsity, cdf_threshold, backend):
    check_parameters(sparsity, cdf_threshold, backend)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, heads, S, D], got "
                             f"{getattr(t, 'shape', type(t))}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q and k must share batch and heads, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must share head_dim, got {q.shape[3]} and {k.shape[3]}")


def _layouts(q, k, grid_q, grid_k, chunk_q, chunk_k):
    layout_q = make_layout(grid_q, chunk_q, "grid_q", "chunk_3d_shape_q")
    layout_k = make_layout(grid_k, chunk_k, "grid_k", "chunk_3d_shape_k")
    if layout_q.num_tokens != q.shape[2]:
        raise ValueError(f"grid_q {layout_q.grid} has {layout_q.num_tokens} tokens but q has S={q.shape[2]}")
    if layout_k.num_tokens != k.shape[2]:
        raise ValueError(f"grid_k {layout_k.grid} has {layout_k.num_tokens} tokens but k has S={k.shape[2]}")
    return layout_q, layout_k


def choose_backend(backend: str, device, dtype: torch.dtype, head_dim: int) -> tuple[str, str]:
    """The path ``block_sparse_attention`` takes for q, k, v of ``dtype`` with ``head_dim``
    features on ``device``: ("triton" | "torch", why). The one decision: the kernel calls it
    per call, the BSA node with the model's device and compute dtype, so both say the same.

    backend "torch": the reference; "auto": Triton on CUDA where it supports the inputs, else
    the reference; "triton": Triton wherever it runs, else the reference (with a warning).
    Reads only static facts, so ``torch.compile`` resolves it at trace time."""
    device = torch.device(device)
    if backend == "torch":
        return "torch", "requested"
    if backend == "auto" and device.type != "cuda":
        return "torch", f"tensors are on {device.type}, not CUDA"
    try:
        from . import bsa_fwd_triton as triton_mod
    except ImportError as err:
        reason = f"triton not importable: {err}"
    else:
        reason = triton_mod.unsupported_reason(device, dtype, head_dim)
    if reason is not None:
        return "torch", reason
    return "triton", ("requested" if backend == "triton" else "CUDA and triton available")


def _choose_backend(q, k, v, backend):
    """``choose_backend`` for these tensors; q, k, v that differ in dtype or device take the
    reference. A requested Triton that cannot run warns (once per reason)."""
    if backend != "torch" and not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        name, reason = "torch", "q, k, v differ in dtype or device"
    else:
        name, reason = choose_backend(backend, q.device, q.dtype, q.shape[-1])
    if backend == "triton" and name == "torch":
        _warn_fallback_once(reason)
    return name, reason


def block_sparse_attention(q, k, v, grid_q, grid_k, sparsity=0.9375, cdf_threshold=None,
                           chunk_3d_shape_q=(4, 4, 4), chunk_3d_shape_k=(4, 4, 4),
                           backend="auto", return_report=False):
    """Block-sparse attention (LongCat-Video BSA) over video tokens in raster order.

    Tokens of q (and of k, v) are the cells of a (T, H, W) grid in T-major raster order
    (index = (t·H + h)·W + w). Both grids are cut into 3D chunks; each query chunk attends, with
    exact softmax scaled by 1/√D, to all tokens of the key chunks its gate selects. The gate
    mean-pools q and k per chunk (real tokens only), scores q̄·k̄ᵀ and keeps
      * top-K (``cdf_threshold=None``): K = floor((1 − sparsity)·Nk) highest-scoring key chunks;
      * CDF (``sparsity=None``): the leading key chunks of softmax(q̄·k̄ᵀ/√D), sorted descending,
        whose cumulative mass is ≤ ``cdf_threshold`` (the crossing chunk is not kept);
      * both given: the CDF count, raised to at least the top-K count.
    Non-causal; ``sparsity=0`` selects every chunk and equals dense attention.

    Args:
        q: ``[B, heads, Sq, D]``, Sq = Tq·H·W.
        k, v: ``[B, heads, Sk, D]``, Sk = Tk·H'·W' (Sq ≠ Sk allowed, e.g. noise queries over
            conditioning + noise keys).
        grid_q, grid_k: (T, H, W) token grids of q and k.
        sparsity: float in [0, 1), or None for CDF-only selection.
        cdf_threshold: float in (0, 1], or None (default) for top-K-only selection.
        chunk_3d_shape_q, chunk_3d_shape_k: (t, h, w) chunk shapes, each dim ≥ 1; they may differ.
        backend: "auto" (Triton on CUDA when importable and supported, else torch), "triton"
            (falls back to torch, with a warning and the reason in the report, when the inputs
            are unsupported: not CUDA, dtype not bf16/fp16, head_dim not 64/128), or "torch".
        return_report: also return a ``BSAReport``.

    Returns:
        Output ``[B, heads, Sq, D]`` in q's dtype and token order (on the Triton raster path
        stored as ``[B, Sq, heads, D]``, a transposed view); with ``return_report``,
        ``(output, BSAReport)``.

    Deviations from the official LongCat code (each pinned by a test):
        * At least one key chunk is kept per query chunk in every mode; official top-K keeps
          floor((1−s)·Nk), which can be 0, and CDF can keep 0, giving all-zero rows
          (tests/kernels/test_gating.py::test_at_least_one_block).
        * Grids need not be multiples of the chunk: each axis is padded; pooling uses real tokens
          only, padded keys get zero probability and only real queries are returned. Official
          asserts divisibility (tests/kernels/test_api.py::test_padded_grid_matches_masked_dense).
        * Each query chunk's key list is visited in ascending chunk order (official: score order),
          which changes only the floating-point summation order.

    Raises:
        ValueError: naming the parameter and value for sparsity outside [0, 1), cdf_threshold
            outside (0, 1], both None, chunk dims < 1, a grid whose product ≠ S, mismatched
            batch/heads/head_dim, k/v shape mismatch, or an unknown backend.
    """
    _check_inputs(q, k, v, sparsity, cdf_threshold, backend)
    layout_q, layout_k = _layouts(q, k, grid_q, grid_k, chunk_3d_shape_q, chunk_3d_shape_k)
    name, reason = _choose_backend(q, k, v, backend)
    out, counts, kept = bsa_forward_op(
        q, k, v, list(layout_q.grid), list(layout_k.grid), list(layout_q.chunk), list(layout_k.chunk),
        None if sparsity is None else float(sparsity),
        None if cdf_threshold is None else float(cdf_threshold), name,
    )
    if not return_report:
        return out
    report = BSAReport(
        backend=name, reason=reason, blocks_per_query_chunk=counts, kept_key_tokens=kept,
        num_query_chunks=layout_q.num_chunks, num_key_chunks=layout_k.num_chunks,
        num_key_tokens=layout_k.num_tokens, padded=layout_q.padded or layout_k.padded,
    )
    return out, report
