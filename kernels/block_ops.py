"""The fused block kernels (kernels/block_triton.py) as ``torch.library`` custom ops.

``torch.compile`` sees each as one opaque node with a fake, so a compiled block keeps them (no
graph break) and eager and compiled runs give the same numbers. The in-place ops declare what
they mutate. ``fused_block_reason`` says whether a tensor can take the fused path, or why not.

Imports only torch (triton lazily); must not import the model package or ComfyUI.
"""

import os

import torch

_NAMESPACE = "longcat_block"
# LONGCAT_FUSED_BLOCK=0 keeps the torch path on the GPU too (comparisons, a way out of a bad kernel).
_DISABLED = os.environ.get("LONGCAT_FUSED_BLOCK", "1") == "0"
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Tests set this to run the kernels on CPU tensors under TRITON_INTERPRET=1 (fp16/fp32 only);
# otherwise CPU tensors always take the torch path.
CPU_INTERPRETER = False


def fused_block_reason(x: torch.Tensor, head_dim: int = 128) -> str | None:
    """None when the fused kernels can run on ``x`` (heads of ``head_dim`` features for
    ``rms_rope_op``); else why not (the torch path runs then)."""
    if _DISABLED:
        return "LONGCAT_FUSED_BLOCK=0"
    if not x.is_cuda and not (CPU_INTERPRETER and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"tensors are on {x.device.type}"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype}"
    if head_dim & (head_dim - 1) or head_dim < 16:
        return f"head_dim {head_dim} is not a power of two ≥ 16"
    try:
        from . import block_triton  # noqa: F401
    except ImportError as err:
        return f"triton not importable: {err}"
    return None


def _ln_modulate(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 shift: torch.Tensor | None, scale: torch.Tensor | None, eps: float) -> torch.Tensor:
    from .block_triton import ln_modulate

    return ln_modulate(x, eps, weight, bias, shift, scale)


def _rms_rope_(x: torch.Tensor, parts: int, part: int, heads: int, weight: torch.Tensor,
               cos: torch.Tensor | None, sin: torch.Tensor | None, rope_offset: int, eps: float) -> None:
    from .block_triton import rms_rope_

    rms_rope_(x, parts, part, heads, weight, cos, sin, rope_offset, eps)


def _gated_residual_(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> None:
    from .block_triton import gated_residual_

    gated_residual_(x, branch, gate)


def _swiglu_(a: torch.Tensor, b: torch.Tensor) -> None:
    from .block_triton import swiglu_

    swiglu_(a, b)


def _op(name, fn, mutates_args=(), fake=None):
    """Register ``fn`` as ``longcat_block::name`` once per process (a second import of the pack
    under another package name reuses it), with ``fake`` for tracing when it returns a tensor."""
    namespace = getattr(torch.ops, _NAMESPACE)
    if hasattr(namespace, name):
        return getattr(namespace, name).default
    op = torch.library.custom_op(f"{_NAMESPACE}::{name}", mutates_args=mutates_args)(fn)
    if fake is not None:
        op.register_fake(fake)
    return op


ln_modulate_op = _op("ln_modulate", _ln_modulate,
                     fake=lambda x, weight, bias, shift, scale, eps: torch.empty_like(x.contiguous()))
rms_rope_op = _op("rms_rope_", _rms_rope_, mutates_args=("x",))
gated_residual_op = _op("gated_residual_", _gated_residual_, mutates_args=("branch",))
swiglu_op = _op("swiglu_", _swiglu_, mutates_args=("a",))
