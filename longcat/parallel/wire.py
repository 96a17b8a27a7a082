"""What rank 0 (``pool``) and a worker process (``worker``) exchange, and how.

Commands go over one pipe per worker as plain Python values (builtins only: the pack is
imported under a different module name in each process, so a pack object would not unpickle);
tensors go over the ``torch.distributed`` group as raw bytes (any dtype, fp8 included: NCCL and
Gloo lack some). The commands:

- ``{"op": "load", "config", "block_kernels", "entries", "release"}``: drop the previous DiT and
  KV caches, build the DiT from ``config`` (the constructor's keyword arguments) with the block
  kernels named ``block_kernels`` and receive every tensor of ``entries`` (``[name, shape,
  dtype]``, rank 0's current values, LoRA patches and fp8 scales included) by broadcast;
- ``{"op": "forward", "tensors", "num_cond_latents", "kv_cache", "return_kv", "store_cache_as",
  "skip_cross_attn", "offload_kv_cache", "bsa", "sigma", "release"}``: receive the inputs named in
  ``FORWARD_INPUTS`` by broadcast and run this rank's share of the forward; keep the KV cache
  under ``store_cache_as`` if asked; ``release``: cache ids rank 0 no longer holds;
- ``{"op": "stop"}``: leave the group and exit.

A worker says ``{"op": "hello", "pid"}`` once started and answers each command ``{"op": "ok"}``
or ``{"op": "error", "message"}`` (then exits: a failed collective leaves the group unusable).
Imports nothing from ComfyUI.
"""

import torch
import torch.distributed as dist

# Run by ``python -c BOOTSTRAP PACK_ROOT ARGS...``: import the pack as ``longcat_pack`` (see
# _standalone.py) and hand the remaining arguments to ``worker.main``.
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import _standalone; _standalone.import_pack(); "
             "from longcat_pack.longcat.parallel.worker import main; sys.exit(main(sys.argv[2:]))")
FORWARD_INPUTS = ("x", "timestep", "context", "context_mask")
_PLAIN_TYPES = (str, int, float, bool, type(None))


def check_plain(value, where="message"):
    """TypeError unless ``value`` is made of builtins only (what a command may carry)."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, where)
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple | frozenset):
        for item in value:
            check_plain(item, where)
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(f"{where}: {type(value).__name__} cannot be sent to a worker")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"unknown dtype {name!r}")
    return dtype


def tensor_meta(tensor: torch.Tensor | None):
    """What the receiving side needs to allocate ``tensor``: ``[shape, dtype name]`` or None."""
    return None if tensor is None else [list(tensor.shape), dtype_name(tensor.dtype)]


def wire_device(device: torch.device) -> torch.device:
    """Where broadcast tensors live: the GPU under NCCL, the CPU under Gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def send(tensor: torch.Tensor, device: torch.device) -> None:
    """Rank 0: broadcast ``tensor``'s bytes."""
    flat = tensor.detach().to(wire_device(device)).reshape(-1)
    if flat.numel() and flat.stride(0) != 1:  # e.g. one element expanded (stride 0): not viewable
        flat = flat.clone(memory_format=torch.contiguous_format)
    dist.broadcast(flat.view(torch.uint8), src=0)


def receive(meta, device: torch.device) -> torch.Tensor | None:
    """Allocate a tensor for ``meta`` on ``device`` and fill it from rank 0's ``send``."""
    if meta is None:
        return None
    shape, dtype = meta
    dtype = dtype_from_name(dtype)
    numel = 1
    for size in shape:
        numel *= size
    data = torch.empty(numel * dtype.itemsize, dtype=torch.uint8, device=wire_device(device))
    dist.broadcast(data, src=0)
    return data.view(dtype).reshape(shape).to(device)
