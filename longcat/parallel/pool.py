"""Rank 0's side of multi-process context parallel: worker processes that each hold the DiT.

``WorkerPool`` makes this process rank 0 of a ``torch.distributed`` group (NCCL on CUDA devices,
Gloo on the CPU; rendezvous on a TCP store at 127.0.0.1) and starts one worker process per
other device (``worker``; what they exchange: ``wire``). It keeps their weights equal to rank
0's current ones (``sync_weights``), runs every DiT forward on all ranks at once (``forward``),
and stops the workers on request, when it is garbage-collected, at interpreter exit and on any
failure.

Failure handling, so that nothing hangs and nothing is left behind:
- starting waits up to ``max(timeout, 120 s)`` for each worker to import torch and say hello;
- commands go over one pipe per worker; a command's answers are awaited for up to ``timeout``
  while a watcher thread reads the pipes, so a worker that errors or dies (its pipe closes) is
  noticed as it happens;
- every collective has the group's ``timeout``; a worker that dies mid-collective breaks the
  collective on rank 0 (Gloo: connection reset; NCCL: the group is aborted by the watcher);
  rank 0 then waits up to 2 s more (``_FAILURE_GRACE_S``) for the other workers' answers, so
  the error names the worker that failed, not only the collective: a dead worker is reported
  within about 2 s;
- an error raised by rank 0's DiT alone, between collectives (ComfyUI's Cancel inside a
  layer), is not a failure: rank 0 joins the forward's remaining collectives with zeros
  (``ContextParallel.drain``), the workers finish it, and the error is re-raised as is;
- after any failure the pool stops every worker (killed at once) and raises ``WorkerError``
  naming the worker and what happened; the next call may ``start`` afresh;
- workers exit by themselves when this process is gone.

Needs Linux/macOS (workers inherit their pipe by file descriptor). Imports nothing from ComfyUI.
"""

import contextlib
import dataclasses
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from datetime import timedelta
from multiprocessing import Pipe
from multiprocessing.connection import wait
from pathlib import Path

import torch
import torch.distributed as dist

from ..dit import window_sigma
from ..options import BSA_OPTIONS_KEY, CP_OPTIONS_KEY, PATCHES_REPLACE_KEY
from .exchange import ContextParallel, check_world_size
from .wire import BOOTSTRAP, FORWARD_INPUTS, check_plain, send, tensor_meta

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 120.0  # at least this long for a worker to import torch and join (cold disk cache)
_STOP_GRACE_S = 5.0  # a stopping worker gets this long to exit before it is killed
_FAILURE_GRACE_S = 2.0  # after rank 0's collective fails: how long to wait for the worker's story
_RESTART_NOTE = ". All workers were stopped; they restart on the next run."

# For this process's NCCL group only: a failed or timed-out collective raises here (blocking
# wait) instead of the default of tearing the whole process down, which would end ComfyUI; the
# pool aborts the group itself (``_abort_process_group`` wants async error handling off).
_RANK0_NCCL_ENV = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0",
                   "TORCH_NCCL_ENABLE_MONITORING": "0"}


def pick_devices(rank0_device, world_size: int) -> list[torch.device]:
    """Devices for ``world_size`` ranks: rank 0's own, then the lowest-numbered other CUDA devices
    (all CPU when rank 0 is on the CPU). ValueError if there are not enough GPUs."""
    device = torch.device(rank0_device)
    if device.type == "cpu":
        return [device] * world_size
    if device.type != "cuda":
        raise ValueError(f"multi-GPU context parallel needs CUDA GPUs (NCCL); the model runs on {device}")
    index = torch.cuda.current_device() if device.index is None else device.index
    count = torch.cuda.device_count()
    others = [i for i in range(count) if i != index][:world_size - 1]
    if len(others) < world_size - 1:
        raise ValueError(f"{world_size} GPUs requested but only {count} CUDA device(s) are visible to this "
                         f"process (CUDA_VISIBLE_DEVICES)")
    return [torch.device("cuda", index)] + [torch.device("cuda", i) for i in others]


class WorkerError(RuntimeError):
    """A worker failed, died or did not answer in time. The pool has stopped all workers."""


class _LeftEarly(Exception):
    """Rank 0's DiT raised between collectives (e.g. Cancel inside a layer) and it joined the
    remaining collectives with zeros; ``error`` is what it raised."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class ShardedKVCache(dict):
    """Rank 0's share of a KV cache built under context parallel: ``{block: (k, v)}`` for rank
    0's heads. Each worker holds its share under ``cache_id``; dropping this object lets them
    free it (on the next command)."""

    def __init__(self, blocks: dict, cache_id: int, generation: int):
        super().__init__(blocks)
        self.cache_id, self.generation = cache_id, generation


@dataclasses.dataclass
class _Worker:
    rank: int
    device: str
    proc: subprocess.Popen
    conn: object

    def describe(self) -> str:
        return f"worker rank {self.rank} ({self.device}, pid {self.proc.pid})"

    def exit_story(self, wait_s: float = 0.0) -> str:
        """How the worker ended, after waiting up to ``wait_s`` for it to end."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait_s)
        code = self.proc.poll()
        if code is None:
            return "closed its pipe but is still running"
        if code < 0:
            return f"was killed by signal {-code}"
        # A worker that fails prints its traceback to its stderr (ComfyUI's console) before exiting.
        return f"exited with code {code} (its traceback, if any, is in the console)"


def _shutdown(workers: list, group_state: dict) -> None:
    """Stop every worker (ask, then kill), close the pipes, leave the group. Idempotent.

    After a failure the workers are killed at once: they may be blocked in a collective.
    """
    failed = group_state.get("failed", False)
    for worker in workers:
        with contextlib.suppress(OSError, ValueError):
            worker.conn.send({"op": "stop"})
    deadline = time.monotonic() + (0.0 if failed else _STOP_GRACE_S)
    for worker in workers:
        try:
            worker.proc.wait(max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
        worker.conn.close()
    workers.clear()
    group_state.pop("failed", None)
    if group_state.pop("active", False) and dist.is_initialized():
        if failed and group_state.get("backend") == "nccl":
            with contextlib.suppress(Exception):
                dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()


@contextlib.contextmanager
def _rank0_nccl_env(backend: str):
    saved = {name: os.environ.get(name) for name in _RANK0_NCCL_ENV}
    if backend == "nccl":
        os.environ.update(_RANK0_NCCL_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class WorkerPool:
    """This process as rank 0 plus ``len(devices) - 1`` worker processes, one per device.

    devices: one ``torch.device`` (or string) per rank, this process's first; all CUDA (NCCL)
    or all CPU (Gloo, for tests: no faster than one process). timeout: seconds any collective
    or wait on a worker may take before the pool gives up (covers a hung worker); starting
    the workers may take up to ``max(timeout, 120)`` s (importing torch on a cold disk cache).
    """

    def __init__(self, devices, timeout: float = 300.0):
        self.devices = [torch.device(d) for d in devices]
        kinds = {d.type for d in self.devices}
        if kinds not in ({"cuda"}, {"cpu"}):
            raise ValueError(f"devices must be all CUDA or all CPU, got {[str(d) for d in self.devices]}")
        if len(self.devices) < 2:
            raise ValueError("a worker pool needs at least two devices")
        self.world_size = len(self.devices)
        self.backend = "nccl" if kinds == {"cuda"} else "gloo"
        self.timeout = float(timeout)
        self.cp = None
        self._workers: list[_Worker] = []
        self._group = {"backend": self.backend}
        self._finalizer = None
        self._weights_version = None
        self._generation = 0
        self._cache_ids = itertools.count(1)
        self._released: list[int] = []

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def pids(self) -> list[int]:
        return [worker.proc.pid for worker in self._workers]

    def start(self) -> None:
        """Start the workers and form the group; bounded by ``timeout``. No-op when started."""
        if self.started:
            return
        if sys.platform == "win32":
            raise RuntimeError("multi-GPU context parallel needs Linux (workers inherit a pipe by file descriptor)")
        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialised in this process (by another "
                               "extension?); the multi-GPU workers need this process's default group")
        started = time.monotonic()
        timeout = timedelta(seconds=self.timeout)
        start_timeout = max(self.timeout, _START_TIMEOUT_S)
        store = dist.TCPStore("127.0.0.1", 0, self.world_size, is_master=True,
                              timeout=timedelta(seconds=start_timeout), wait_for_workers=False)
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._group)
        try:
            for rank in range(1, self.world_size):
                self._workers.append(self._spawn(rank, store.port))
            for worker in self._workers:
                self._expect(worker, "hello", "starting", start_timeout)
            with _rank0_nccl_env(self.backend):
                dist.init_process_group(self.backend, store=store, rank=0, world_size=self.world_size,
                                        timeout=timeout)
            self._group["active"] = True
            self.cp = ContextParallel()
        except BaseException:
            self.stop()
            raise
        self._generation += 1
        self._weights_version = None
        log.info("LongCat context parallel: %d ranks (%s) started in %.1f s, worker pids %s", self.world_size,
                 self.backend, time.monotonic() - started, self.pids())

    def _spawn(self, rank: int, port: int) -> _Worker:
        ours, theirs = Pipe()
        args = [sys.executable, "-c", BOOTSTRAP, str(PACK_ROOT), "--rank", str(rank),
                "--world-size", str(self.world_size), "--store-port", str(port), "--fd", str(theirs.fileno()),
                "--device", str(self.devices[rank]), "--timeout", str(self.timeout),
                "--parent-pid", str(os.getpid())]
        proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        return _Worker(rank, str(self.devices[rank]), proc, ours)

    def _expect(self, worker: _Worker, op: str, doing: str, timeout: float) -> dict:
        """The next message from ``worker``, which must be ``op``; WorkerError otherwise."""
        story = None
        if not worker.conn.poll(timeout):
            story = f"did not answer within {timeout:g} s"
        else:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                story = worker.exit_story(1.0)
            else:
                if message.get("op") == op:
                    return message
                story = f"failed: {_last_line(str(message.get('message', message)))}"
        raise WorkerError(f"LongCat multi-GPU failed while {doing}: {worker.describe()} {story}")

    def stop(self) -> None:
        """Stop every worker and leave the group; safe to call at any time, any number of times."""
        if self._finalizer is not None:
            self._finalizer()
        self.cp = None

    def sync_weights(self, dit: torch.nn.Module, config: dict, version) -> bool:
        """Give every worker ``dit``'s current weights unless they already hold ``version``.

        config: the DiT constructor's keyword arguments (builtins). version: any builtin value
        that changes whenever the weights do (ComfyUI: the model and its patches' id). Returns
        whether the weights were sent. Sending drops the workers' KV caches.
        """
        self._check_started()
        if version == self._weights_version:
            return False
        state = dit.state_dict()
        if quantized := [name for name in state if name.endswith(".comfy_quant")]:
            raise ValueError(f"{quantized[0].rpartition('.')[0]}: ComfyUI-format quantized weights cannot be sent "
                             "to the multi-GPU workers; load the file with weight_dtype bf16 (or a bf16 file) for multi-GPU")
        entries = [[name, *tensor_meta(tensor)] for name, tensor in state.items()]

        def send_all():
            for tensor in state.values():
                send(tensor, self.devices[0])

        self._weights_version = None
        started = time.monotonic()
        message = {"op": "load", "config": config, "block_kernels": dit.block_kernels.name, "entries": entries}
        self._run(message, send_all, "loading the weights")
        self._weights_version = version
        self._generation += 1
        mib = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
        log.info("LongCat context parallel: sent %d weights (%.1f MiB) to %d workers in %.2f s", len(entries), mib,
                 len(self._workers), time.monotonic() - started)
        return True

    def forward(self, dit, x, timestep, context=None, context_mask=None, *, num_cond_latents=0, kv_cache=None,
                return_kv=False, skip_cross_attn=False, transformer_options=None, offload_kv_cache=False):
        """``dit.forward`` with the same arguments, run over every rank; returns rank 0's result.

        With ``return_kv`` the cache is a ``ShardedKVCache``; pass it back as ``kv_cache``
        (a cache from a single-process forward cannot be used here).
        """
        self._check_started()
        opts = dict(transformer_options or {})
        if opts.get(PATCHES_REPLACE_KEY, {}).get("dit"):
            raise ValueError("DiT block patches (patches_replace) cannot run on the multi-GPU workers")
        check_world_size(dit.num_heads, self.world_size)
        # Every rank, this one included, computes on the same contiguous values: a strided input
        # could round differently here than its contiguous copy does on the workers.
        tensors = {name: None if t is None else t.contiguous() for name, t in (
            ("x", x), ("timestep", torch.as_tensor(timestep, device=x.device)), ("context", context),
            ("context_mask", context_mask))}
        settings = opts.get(BSA_OPTIONS_KEY)
        message = {
            "op": "forward", "tensors": {name: tensor_meta(t) for name, t in tensors.items()},
            "num_cond_latents": int(num_cond_latents), "kv_cache": self._cache_id(kv_cache),
            "return_kv": bool(return_kv), "store_cache_as": next(self._cache_ids) if return_kv else None,
            "skip_cross_attn": bool(skip_cross_attn), "offload_kv_cache": bool(offload_kv_cache),
            "bsa": None if settings is None else dataclasses.asdict(settings),
            "sigma": window_sigma(opts),
        }
        def run_rank0():
            for name in FORWARD_INPUTS:
                if tensors[name] is not None:
                    send(tensors[name], self.devices[0])
            opts[CP_OPTIONS_KEY] = self.cp
            self.cp.joined, self.cp.broken = 0, False
            try:
                with torch.no_grad():
                    return dit(**tensors, num_cond_latents=num_cond_latents,
                               kv_cache=kv_cache, return_kv=return_kv, skip_cross_attn=skip_cross_attn,
                               transformer_options=opts, offload_kv_cache=offload_kv_cache)
            except BaseException as err:
                if self.cp.broken:
                    raise
                self._drain(dit, x)
                raise _LeftEarly(err) from err

        try:
            result = self._run(message, run_rank0, "running a DiT forward")
        except _LeftEarly as left:
            if return_kv:  # the workers kept a cache that no ShardedKVCache will ever release
                self._released.append(message["store_cache_as"])
            raise left.error from None
        if not return_kv:
            return result
        out, cache = result
        cache = ShardedKVCache(cache, message["store_cache_as"], self._generation)
        weakref.finalize(cache, self._released.append, cache.cache_id)
        return out, cache

    def _drain(self, dit, x):
        t, h, w = x.shape[2:]
        pt, ph, pw = dit.patch_size
        self.cp.drain(x.shape[0], dit.num_heads, dit.head_dim, x.dtype, (t // pt, h // ph, w // pw),
                      len(dit.blocks), pt * ph * pw * dit.out_channels, x.device)

    def _check_started(self):
        if not self.started:
            raise RuntimeError("the worker pool is not running; call start() first")

    def _cache_id(self, kv_cache):
        if kv_cache is None:
            return None
        if not isinstance(kv_cache, ShardedKVCache):
            raise TypeError("kv_cache was built without multi-GPU; under multi-GPU build it with the "
                            "same MODEL (each GPU keeps its share)")
        if kv_cache.generation != self._generation:
            raise ValueError("kv_cache was built before the multi-GPU workers restarted or reloaded their "
                             "weights; build it again")
        return kv_cache.cache_id

    def _run(self, message: dict, rank0_part, doing: str):
        """Send ``message`` to every worker, run rank 0's part meanwhile, collect every answer."""
        release = []
        while self._released:  # filled by cache finalizers, possibly from another thread
            release.append(self._released.pop())
        message["release"] = release
        check_plain(message)
        watcher = _Watcher(self._workers, self.backend)
        for worker in self._workers:
            try:
                worker.conn.send(message)
            except OSError:
                watcher.record_dead(worker, worker.exit_story(1.0))
        watcher.start()
        try:
            result = None if watcher.failed else rank0_part()
        except _LeftEarly as left:
            # Every rank finished the forward: the group is in step; keep it if the workers are fine.
            if not watcher.finish(self.timeout):
                self._fail()
                raise WorkerError(f"LongCat multi-GPU failed while {doing}: "
                                  f"{watcher.describe(f'did not finish within {self.timeout:g} s (hung?)')}"
                                  f"{_RESTART_NOTE}") from left.error
            raise
        except BaseException as err:
            watcher.finish(_FAILURE_GRACE_S)  # a worker's story may lag rank 0's error a little
            self._fail()
            if watcher.failed:
                raise WorkerError(f"LongCat multi-GPU failed while {doing}: "
                                  f"{watcher.describe('had not finished')}{_RESTART_NOTE}") from err
            if isinstance(err, RuntimeError) and watcher.pending:  # a collective failed or timed out
                raise WorkerError(f"LongCat multi-GPU failed while {doing}: rank 0 stopped with "
                                  f"\"{_last_line(str(err))}\"; {watcher.describe('had not finished')}"
                                  f"{_RESTART_NOTE}") from err
            raise
        if not watcher.finish(self.timeout):
            self._fail()
            raise WorkerError(f"LongCat multi-GPU failed while {doing}: "
                              f"{watcher.describe(f'did not answer within {self.timeout:g} s')}{_RESTART_NOTE}")
        return result

    def _fail(self):
        self._group["failed"] = True
        self.stop()


class _Watcher(threading.Thread):
    """Reads every worker's answer to one command. On an error or a death it records the story
    and, under NCCL, aborts the group so that rank 0's pending collective returns."""

    def __init__(self, workers, backend):
        super().__init__(name="longcat-cp-watcher", daemon=True)
        self.pending = {worker.conn: worker for worker in workers}
        self.backend = backend
        self.dead, self.errors = [], []
        self._stop_event = threading.Event()

    @property
    def failed(self) -> bool:
        return bool(self.dead or self.errors)

    def record_dead(self, worker, story: str):
        self.pending.pop(worker.conn, None)
        self.dead.append((worker, story))
        self._abort()

    def _abort(self):
        if self.backend == "nccl" and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.distributed_c10d._abort_process_group()

    def run(self):
        while self.pending and not self._stop_event.is_set():
            for conn in wait(list(self.pending), timeout=0.1):
                worker = self.pending.pop(conn)
                try:
                    answer = conn.recv()
                except (EOFError, OSError):
                    self.record_dead(worker, worker.exit_story(1.0))
                    continue
                if answer.get("op") != "ok":
                    self.errors.append((worker, _last_line(str(answer.get("message", answer)))))
                    self._abort()

    def finish(self, timeout: float) -> bool:
        """Wait until every worker answered, or one failed (then a little longer for the others'
        stories), or ``timeout`` s; stop watching. Whether every worker answered ok."""
        deadline = time.monotonic() + timeout
        while self.is_alive() and not self.failed and time.monotonic() < deadline:
            self.join(0.05)
        if self.failed:
            self.join(min(_FAILURE_GRACE_S, max(0.0, deadline - time.monotonic())))
        self._stop_event.set()
        self.join()
        return not self.pending and not self.failed

    def describe(self, silent: str) -> str:
        """Dead workers first, then silent ones, then those that failed. ``silent`` says how a
        worker without an answer is described when no other worker failed; after a failure such
        a worker was only waiting for the others (it is stopped with them)."""
        if self.failed:
            silent = "was stopped with the others before it finished"
        parts = [f"{worker.describe()} {story}" for worker, story in self.dead]
        parts += [f"{worker.describe()} {silent}" for worker in self.pending.values()]
        parts += [f"{worker.describe()} failed: {error}" for worker, error in self.errors]
        return "; ".join(parts)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else text

