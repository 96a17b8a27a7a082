"""A context-parallel worker process: one copy of the DiT on one device, driven by rank 0.

Started by ``pool.WorkerPool`` in a fresh Python (``python -c`` with ``wire.BOOTSTRAP``); never
imported into ComfyUI's process. Rank 0 sends commands over a pipe and tensors over the
``torch.distributed`` group (``wire``: the commands and their answers). The DiT is built with
``build.dit_from_state_dict``, as every loader builds it (scaled fp8 scales, dtypes, block
kernels), from the tensors rank 0 sends.

The worker exits after an error (a failed collective leaves the group unusable), when the pipe
closes, or when its parent process is gone (checked twice a second), so it never outlives the
process that started it. Imports nothing from ComfyUI.
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

from ..bsa_settings import BSASettings
from ..build import dit_from_state_dict
from ..options import BSA_OPTIONS_KEY, CP_OPTIONS_KEY, SIGMAS_KEY
from .exchange import ContextParallel
from .wire import FORWARD_INPUTS, receive

_PARENT_POLL_S = 0.5


class Worker:
    """The DiT copy and KV caches of one worker, and what each command does to them."""

    def __init__(self, device: torch.device):
        self.device = device
        self.model = None
        self.caches = {}
        self.cp = ContextParallel()

    def load(self, config: dict, block_kernels: str, entries: list) -> None:
        self.model = None
        self.caches.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        state = {name: receive(meta, self.device) for name, *meta in entries}
        self.model = dit_from_state_dict(state, config, block_kernels=block_kernels)

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
            options[SIGMAS_KEY] = torch.tensor([message["sigma"]])
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
                worker.load(message["config"], message["block_kernels"], message["entries"])
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
