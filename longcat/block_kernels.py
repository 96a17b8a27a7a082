"""The elementwise work of a DiT block, as one object the model is built with.

A block's layers call ``block_kernels.norm_modulate`` / ``norm_affine`` / ``gated_residual`` /
``swiglu`` / ``qkv_norm_rope`` / ``head_norm`` and never decide themselves which code runs: the
choice is injected where the model is built, as ComfyUI's ``operations`` and our dense
``attention`` are. Two implementations:

- ``TORCH_KERNELS``: plain torch ops (the official "fp32 islands" written out; the tests' oracle).
  Runs anywhere; the DiT's default.
- ``FUSED_KERNELS``: the fused Triton kernels (``kernels/block_ops.py``), same roundings, far
  fewer passes over the activations on the GPU. Inputs the kernels do not take (a ComfyUI layer
  that casts or patches its own weights, a strided tensor) get the torch ops for that call.

``choose_block_kernels(choice, device, dtype, head_dim)`` is the one decision: "auto" takes the
fused kernels where they can run (CUDA, triton importable, bf16 / fp16 / fp32 compute, a power-
of-two head size), "torch" the torch ops, "fused" the kernels (ValueError where they cannot run).
The loaders (``weights.load_dit``, ``build.dit_from_state_dict``, ComfyUI's loader node) take the
choice as an argument. Imports nothing from ComfyUI.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.block_ops import (
    DTYPES,
    fused_block_reason,
    gated_residual_op,
    ln_modulate_op,
    rms_rope_op,
    swiglu_op,
)
from .rope import apply_rope

CHOICES = ("auto", "fused", "torch")


def casts_itself(layer: nn.Module) -> bool:
    """True for ComfyUI ops that cast (and patch / offload) their own weights at forward time."""
    return bool(
        getattr(layer, "comfy_cast_weights", False)
        or getattr(layer, "weight_function", None)
        or getattr(layer, "bias_function", None)
    )


def like(param: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``param`` (or None) on ``x``'s device and in ``x``'s dtype."""
    return None if param is None else param.to(device=x.device, dtype=x.dtype)


def layer_norm_fp32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` in fp32 (affine or not), returned as fp32 (the caller casts back)."""
    x = x.float()
    if casts_itself(norm):
        return norm(x)
    weight, bias = like(getattr(norm, "weight", None), x), like(getattr(norm, "bias", None), x)
    return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x·(1 + scale) + shift``; x ``[B, T, HW, C]``, shift/scale ``[B, T, 1, C]``."""
    return x * (1 + scale) + shift


def split_heads(qkv: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """``[B, n, parts·heads·D]`` → ``parts`` views ``[B, heads, n, D]`` (feature order part, head, D)."""
    b, n, features = qkv.shape
    return qkv.view(b, n, parts, heads, features // (parts * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def norm_rope(q: torch.Tensor, k: torch.Tensor, q_norm: nn.Module, k_norm: nn.Module, cos: torch.Tensor,
              sin: torch.Tensor, rope_k: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k ``[B, heads, n, D]`` → (RMSNorm + RoPE of q over the last n rows of the tables,
    RMSNorm of k, roped over the first n rows if ``rope_k``), with torch ops."""
    n = q.shape[2]
    q = apply_rope(q_norm(q), cos[-n:], sin[-n:])
    k = k_norm(k)
    return q, apply_rope(k, cos[:n], sin[:n]) if rope_k else k


class TorchBlockKernels:
    """The block's elementwise work as plain torch ops."""

    name = "torch"

    def norm_modulate(self, norm: nn.Module, x: torch.Tensor, shift: torch.Tensor,
                      scale: torch.Tensor) -> torch.Tensor:
        """``modulate(LayerNorm(x))`` in fp32, per frame, rounded once to x's dtype.

        x ``[B, N, C]``; shift/scale fp32 ``[B, T, 1, C]`` (N divisible by T); ``norm`` has no affine."""
        b, n, c = x.shape
        h = modulate(layer_norm_fp32(norm, x.reshape(b, shift.shape[1], -1, c)), shift, scale)
        return h.to(x.dtype).reshape(b, n, c)

    def norm_affine(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Affine LayerNorm of x ``[B, N, C]`` in fp32, rounded to x's dtype."""
        return layer_norm_fp32(norm, x).to(x.dtype)

    def gated_residual(self, x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``x + gate·branch`` in fp32 (gate ``[B, T, 1, C]`` per frame), cast back to x's dtype.

        x, branch ``[B, N, C]``; ``branch`` (a fresh layer output) may be overwritten."""
        b, n, c = x.shape
        frames = gate.shape[1]
        out = x.reshape(b, frames, -1, c).float() + gate * branch.reshape(b, frames, -1, c).float()
        return out.to(x.dtype).reshape(b, n, c)

    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``silu(gate)·up``; ``gate`` (a fresh layer output) may be overwritten."""
        return F.silu(gate) * up

    def qkv_norm_rope(self, qkv: torch.Tensor, q_norm: nn.Module, k_norm: nn.Module, heads: int,
                      cos: torch.Tensor, sin: torch.Tensor, rope_k: bool):
        """q (normed, roped), k (normed; roped if ``rope_k``), v ``[B, heads, n, D]`` from qkv
        ``[B, n, 3·heads·D]``. RoPE tables ``[m, D]``: the queries take the last n rows (they
        sit after any cached frames), k the first n."""
        q, k, v = split_heads(qkv, 3, heads)
        return (*norm_rope(q, k, q_norm, k_norm, cos, sin, rope_k), v)

    def head_norm(self, norm: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
        """Per-head RMSNorm of x ``[B, n, heads·D]`` → ``[B, heads, n, D]``."""
        b, n, _ = x.shape
        return norm(x.view(b, n, heads, -1)).transpose(1, 2)


class FusedBlockKernels(TorchBlockKernels):
    """The block's elementwise work on the fused Triton kernels (``kernels/block_ops.py``).

    cpu_interpreter: also run them on CPU tensors (tests under ``TRITON_INTERPRET=1``, fp32 /
    fp16 only); otherwise a CPU tensor is an error (the model was built for the GPU)."""

    name = "fused"

    def __init__(self, cpu_interpreter: bool = False):
        self.cpu_interpreter = cpu_interpreter

    def _check(self, x: torch.Tensor) -> None:
        if not (x.is_cuda or self.cpu_interpreter):
            raise RuntimeError(f"LongCat DiT built with the fused block kernels got {x.device.type} tensors; "
                               "build it with block_kernels='torch' (or 'auto') to run there")
        if x.dtype not in DTYPES:
            raise RuntimeError(f"the fused block kernels take bf16 / fp16 / fp32 activations, got {x.dtype}; "
                               "build the model with block_kernels='torch'")

    def norm_modulate(self, norm, x, shift, scale):
        self._check(x)
        return ln_modulate_op(x, None, None, shift, scale, norm.eps)

    def norm_affine(self, norm, x):
        # Only a ComfyUI layer that casts its own weights (fp8, offload, patches) knows them.
        if casts_itself(norm):
            return super().norm_affine(norm, x)
        self._check(x)
        weight = norm.weight.to(device=x.device, dtype=torch.float32)
        bias = norm.bias.to(device=x.device, dtype=torch.float32)
        return ln_modulate_op(x, weight, bias, None, None, norm.eps)

    def gated_residual(self, x, branch, gate):
        if not branch.is_contiguous() or branch.dtype != x.dtype:
            return super().gated_residual(x, branch, gate)
        self._check(x)
        gated_residual_op(x, branch, gate)
        return branch

    def swiglu(self, gate, up):
        if not (gate.is_contiguous() and up.is_contiguous()):
            return super().swiglu(gate, up)
        self._check(gate)
        swiglu_op(gate, up)  # silu(gate)·up written over gate
        return gate

    def qkv_norm_rope(self, qkv, q_norm, k_norm, heads, cos, sin, rope_k):
        # In place in the qkv output, so q, k, v stay views of one [B, n, 3·C] tensor, which the
        # attention kernels read as they are.
        if not qkv.is_contiguous():
            return super().qkv_norm_rope(qkv, q_norm, k_norm, heads, cos, sin, rope_k)
        self._check(qkv)
        n = qkv.shape[1]
        rms_rope_op(qkv, 3, 0, heads, like(q_norm.weight, qkv), cos, sin, cos.shape[0] - n, q_norm.eps)
        rms_rope_op(qkv, 3, 1, heads, like(k_norm.weight, qkv), cos if rope_k else None,
                    sin if rope_k else None, 0, k_norm.eps)
        return split_heads(qkv, 3, heads)

    def head_norm(self, norm, x, heads):
        if not x.is_contiguous():
            return super().head_norm(norm, x, heads)
        self._check(x)
        rms_rope_op(x, 1, 0, heads, like(norm.weight, x), None, None, 0, norm.eps)
        return split_heads(x, 1, heads)[0]


TORCH_KERNELS = TorchBlockKernels()
FUSED_KERNELS = FusedBlockKernels()


def choose_block_kernels(choice: str = "auto", device="cpu", dtype: torch.dtype | None = None,
                         head_dim: int = 128) -> TorchBlockKernels:
    """The block kernels for a model computing on ``device`` in ``dtype`` (None: not known yet).

    choice: "auto" (fused where ``kernels.block_ops.fused_block_reason`` finds nothing against
    them, else torch), "fused" (ValueError saying why where they cannot run) or "torch"."""
    if choice not in CHOICES:
        raise ValueError(f"block_kernels must be one of {CHOICES}, got {choice!r}")
    if choice == "torch":
        return TORCH_KERNELS
    reason = fused_block_reason(device, dtype, head_dim)
    if reason is None:
        return FUSED_KERNELS
    if choice == "fused":
        raise ValueError(f"the fused block kernels cannot run here: {reason}; use block_kernels='torch'")
    return TORCH_KERNELS


def kernels_named(name: str) -> TorchBlockKernels:
    """The kernels whose ``name`` is ``name`` ("torch" / "fused"): how a worker process builds its
    DiT with rank 0's choice."""
    for kernels in (TORCH_KERNELS, FUSED_KERNELS):
        if kernels.name == name:
            return kernels
    raise ValueError(f"unknown block kernels {name!r}")
