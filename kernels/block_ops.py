"""The fused block kernels (kernels/block_triton.py) as ``torch.library`` custom ops.

``torch.compile`` sees each as one opaque node with a fake, so a compiled block keeps them (no
graph break) and eager and compiled runs give the same numbers. The in-place ops declare what
they mutate. ``fused_block_reason`` says whether the kernels can run for a device, dtype and
head size, or why not; the model decides once, where it is built (``longcat/block_kernels.py``).

Imports only torch (triton lazily); must not import the model package or ComfyUI. No module
state: nothing here is switched by the environment.
"""

import torch

_NAMESPACE = "longcat_block"
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def fused_block_reason(device, dtype: torch.dtype | None = None, head_dim: int = 128) -> str | None:
    """None when the fused kernels can run on ``device`` for activations of ``dtype`` (None: not
    known yet) and heads of ``head_dim`` features; else why not (the torch ops run then).

    Only CUDA counts: the Triton interpreter (``TRITON_INTERPRET=1``, for tests) runs them on the
    CPU too, but only when asked for explicitly."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the model runs on {device.type}"
    if dtype is not None and dtype not in DTYPES:
        return f"compute dtype {dtype}"
    if head_dim & (head_dim - 1) or head_dim < 16:
        return f"head_dim {head_dim} is not a power of two >= 16"
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
