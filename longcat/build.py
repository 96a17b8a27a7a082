"""Building a LongCat DiT from a state dict: the one place that knows how.

Every loader goes through here (``weights.load_dit``, ComfyUI's loader in
``nodes/model_adapter.py``, the multi-GPU workers in ``parallel/worker.py``), so a state dict
that loads in one loads in all:

- the model is built on the meta device (no random init, no second copy in RAM) and the
  tensors are assigned into it;
- scaled fp8 weights (``<linear>.scale_weight`` keys, ``scaled_fp8``) get their scale
  attachments first;
- the dtypes are the state dict's (fp8, bf16, mixed); ``operations`` cast them at use
  (``layers.cast_ops`` outside ComfyUI);
- the blocks' elementwise kernels are chosen once (``block_kernels.choose_block_kernels``).

Imports nothing from ComfyUI.
"""

import torch

from .block_kernels import TorchBlockKernels, choose_block_kernels
from .dit import LongCatVideoDiT
from .layers import cast_ops
from .scaled_fp8 import attach_scales, is_scale_key


def head_dim(config: dict) -> int:
    """Features per attention head of the DiT ``config`` describes (defaults: the published DiT)."""
    return config.get("hidden_size", 4096) // config.get("num_heads", 32)


def resolve_block_kernels(block_kernels, device, compute_dtype: torch.dtype | None, config: dict):
    """``block_kernels`` as an object: a choice ("auto" / "fused" / "torch") is decided for
    ``device`` and ``compute_dtype`` (None: not known yet); an object is returned as is."""
    if isinstance(block_kernels, TorchBlockKernels):
        return block_kernels
    return choose_block_kernels(block_kernels, device, compute_dtype, head_dim(config))


def load_weights(model: LongCatVideoDiT, state: dict) -> LongCatVideoDiT:
    """Assign ``state`` into ``model`` (a meta skeleton), scale attachments included; strict
    (every key, every shape)."""
    attach_scales(model, [key for key in state if is_scale_key(key)])
    model.requires_grad_(False)  # before assigning: int8 weights cannot be parameters that need grad
    model.load_state_dict(state, strict=True, assign=True)
    return model


def dit_from_state_dict(state: dict, config: dict, *, operations=None, attention=None, block_kernels="auto",
                        compute_dtype: torch.dtype | None = None) -> LongCatVideoDiT:
    """A ``LongCatVideoDiT`` holding ``state``'s tensors (official keys, as ``weights.read_tensors``
    returns them or ``dit.state_dict()`` gives them).

    config: the constructor's keyword arguments (``weights.infer_config`` / ``inspect_checkpoint``).
    operations: default ``layers.cast_ops``. attention: default SDPA. block_kernels: "auto"
    (fused kernels where they can run on the state's device), "fused", "torch", or a kernels
    object. compute_dtype: the activations' dtype if known (for the "auto" decision).
    """
    device = next(iter(state.values())).device if state else torch.device("cpu")
    kernels = resolve_block_kernels(block_kernels, device, compute_dtype, config)
    model = LongCatVideoDiT(**config, attention=attention, device="meta", block_kernels=kernels,
                            operations=cast_ops if operations is None else operations)
    return load_weights(model, state).requires_grad_(False).eval()
