"""A context-parallel worker process: one copy of the DiT on one device, driven by rank 0.

Started by ``parallel_pool.WorkerPool`` in a fresh Python (``python -c`` with ``BOOTSTRAP``);
never imported into ComfyUI's process except for the helpers it shares with the pool. Rank 0
sends commands over a pipe (plain Python values only: the pack's classes are pickled under a
different module name in each process) and tensors over the torch.distributed group:

- ``load``: drop the previous DiT and KV caches, build the skeleton from ``config`` and receive
  every weight by broadcast (rank 0's current values, LoRA patches included);
- ``forward``: receive the inputs by broadcast and run this rank's share of the DiT forward
  (``parallel.ContextParallel``); keep the KV cache it returns under an id if asked, drop the
  caches rank 0 no longer holds;
- ``stop``: leave the group and exit.

Each command is answered ``{"op": "ok"}``, or ``{"op": "error", "message": ...}`` after which
the worker exits at once (a failed collective leaves the group unusable). The worker also exits
when the pipe closes or its parent process is gone (checked twice a second), so it never
outlives the process that started it. Imports nothing from ComfyUI.
"""

import argparse
import os
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from .bsa_settings import BSA_OPTIONS_KEY, BSASettings
from .dit import LongCatVideoDiT
from .layers import cast_ops
from .parallel import CP_OPTIONS_KEY, ContextParallel

# Run by ``python -c BOOTSTRAP PACK_ROOT ARGS...``: import the pack as ``longcat_pack`` (see
# _standalone.py) and hand the remaining arguments to ``main``.
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import _standalone; _standalone.import_pack(); "
             "from longcat_pack.longcat.parallel_worker import main; sys.exit(main(sys.argv[2:]))")
FORWARD_INPUTS = ("x", "timestep", "context", "context_mask")
_PARENT_POLL_S = 0.5


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
    """Rank 0: broadcast ``tensor``'s bytes (any dtype, fp8 included: NCCL and Gloo lack some)."""
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


class Worker:
    """The DiT copy and KV caches of one worker, and what each command does to them."""

    def __init__(self, device: torch.device):
        self.device = device
        self.model = None
        self.caches = {}
        self.cp = ContextParallel()

    def load(self, config: dict, entries: list) -> None:
        self.model = None
        self.caches.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        model = LongCatVideoDiT(**config, device="meta", operations=cast_ops)
        state = {name: receive(meta, self.device) for name, *meta in entries}
        model.load_state_dict(state, strict=True, assign=True)
        self.model = model.eval()

    def forward(self, message: dict) -> None:
        for cache_id in message["release"]:
            self.caches.pop(cache_id, None)
        if self.model is None:
            raise RuntimeError("forward before any weights were loaded")
        inputs = {name: receive(message["tensors"][name], self.device) for name in FORWARD_INPUTS}
        options = {CP_OPTIONS_KEY: self.cp}
        if message["bsa"] is not None:
            options[BSA_OPTIONS_KEY] = BSASettings(**message["bsa"])
        if message["sigma"] is not None:
            options["sigmas"] = torch.tensor([message["sigma"]])
        kv_cache = None
        if message["kv_cache"] is not None:
            if message["kv_cache"] not in self.caches:
                raise RuntimeError(f"KV cache {message['kv_cache']} is not held by this worker")
            kv_cache = self.caches[message["kv_cache"]]
        with torch.no_grad():
            result = self.model(**inputs, num_cond_latents=message["num_cond_latents"], kv_cache=kv_cache,
                                return_kv=message["return_kv"], skip_cross_attn=message["skip_cross_attn"],
                                transformer_options=options, offload_kv_cache=message["offload_kv_cache"])
        if message["return_kv"]:
            self.caches[message["store_cache_as"]] = result[1]


def _exit_with_parent(parent_pid: int) -> None:
    """Exit at once when the parent is gone (reparented), even while blocked in a collective."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _parse(argv):
    parser = argparse.ArgumentParser(description="LongCat-Video context-parallel worker")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--store-port", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True, help="pipe to rank 0 (inherited fd)")
    parser.add_argument("--device", required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds, every collective")
    parser.add_argument("--parent-pid", type=int, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    _exit_with_parent(args.parent_pid)
    conn = Connection(args.fd)
    conn.send({"op": "hello", "pid": os.getpid()})
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=args.timeout)
    store = dist.TCPStore("127.0.0.1", args.store_port, args.world_size, is_master=False, timeout=timeout)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=args.rank,
                            world_size=args.world_size, timeout=timeout)
    worker = Worker(device)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # rank 0 closed the pipe or died: nothing left to serve
            os._exit(0)
        try:
            if message["op"] == "stop":
                dist.destroy_process_group()
                return 0
            if message["op"] == "load":
                worker.load(message["config"], message["entries"])
            elif message["op"] == "forward":
                worker.forward(message)
            else:
                raise ValueError(f"unknown command {message['op']!r}")
            conn.send({"op": "ok"})
        except Exception:  # noqa: BLE001 -- every failure goes back to rank 0, then the worker ends
            story = traceback.format_exc()
            print(f"LongCat multi-GPU worker rank {args.rank}:\n{story}", file=sys.stderr, flush=True)
            try:
                conn.send({"op": "error", "message": story})
            finally:
                os._exit(1)
