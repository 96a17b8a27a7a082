"""LongCat Multi-GPU: MODEL → MODEL whose every DiT call runs on several GPUs (context parallel).

The node stores a ``MultiGPURunner`` in the MODEL's transformer_options; the adapter's
``_apply_model`` hands each DiT call to it. The runner owns a ``longcat.parallel.pool.WorkerPool``:
this ComfyUI process is rank 0 on the MODEL's GPU and N−1 worker processes hold the DiT on the
next GPUs. Workers start on the first DiT call and receive rank 0's weights as loaded (LoRA
patches applied), again whenever those change. They stop when ComfyUI has unloaded the DiT
while no prompt runs ("Unload Models"; a watch thread sees it within a second), when the last
MODEL holding the runner is dropped, when ComfyUI exits, and on any failure (the error names
the worker); the next DiT call starts them again. Within a prompt ComfyUI may move the DiT off
the first GPU and back (memory for the VAE, a LoRA switch); the workers, on their own GPUs,
keep their copy. One multi-GPU model runs at a time: the process has one default
``torch.distributed`` group.
"""

import atexit
import inspect
import logging
import sys
import threading
import weakref

import comfy.model_management
from comfy_api.latest import io

from ..longcat.dit import LongCatVideoDiT
from ..longcat.options import ATTENTION_OVERRIDE_KEY, MULTI_GPU_OPTIONS_KEY
from ..longcat.parallel.exchange import check_world_size
from ..longcat.parallel.pool import WorkerPool, pick_devices
from .runtime import check_longcat

log = logging.getLogger(__name__)

_DIT_ARGS = frozenset(inspect.signature(LongCatVideoDiT.__init__).parameters) - {
    "self", "attention", "device", "dtype", "operations", "block_kernels"}
_UNLOAD_POLL_S = 1.0
_active_runner = None  # weakref to the runner whose workers run (one group per process)
# Watch threads end at interpreter exit before the pools' own exit hooks run: a daemon thread
# that drops the last reference to a pool during finalization aborts the process.
_exiting = threading.Event()
_watches: list[threading.Thread] = []


class MultiGPURunner:
    """Runs one MODEL's DiT calls over ``gpus`` processes; shared by the MODEL's clones."""

    def __init__(self, gpus: int, timeout: float):
        self.gpus, self.timeout = gpus, timeout
        self.pool = None
        self._lock = threading.RLock()  # the unload watch never stops the workers mid-call
        self._warned = False

    def __deepcopy__(self, memo):
        return self  # MODEL clones deep-copy transformer_options; the workers are shared

    def forward(self, base_model, x, timestep, context, transformer_options=None, **kwargs):
        """``diffusion_model(x, timestep, context, ...)`` of ``base_model``, run on every GPU."""
        opts = transformer_options or {}
        if ATTENTION_OVERRIDE_KEY in opts:
            raise ValueError("LongCat Multi-GPU: an attention-override patch is on this MODEL; it would "
                             "run on the first GPU only. Remove it or the Multi-GPU node.")
        with self._lock:
            pool = self._running_pool(base_model, x.device)
            if base_model.model_lowvram:
                _load_whole(base_model)
            dit = base_model.diffusion_model
            version = (id(base_model), str(base_model.current_weight_patches_uuid))
            if pool.sync_weights(dit, dit_config(base_model), version) and not self._warned:
                self._warned = _warn_if_attention_differs(dit)
            return pool.forward(dit, x, timestep, context, transformer_options=opts, **kwargs)

    def _running_pool(self, base_model, device) -> WorkerPool:
        global _active_runner
        if self.pool is not None and self.pool.started:
            return self.pool
        other = _active_runner() if _active_runner is not None else None
        if other is not None and other is not self:
            other.stop()
        self.pool = WorkerPool(pick_devices(device, self.gpus), self.timeout)
        self.pool.start()
        _active_runner = weakref.ref(self)
        _start_watch(self, base_model, self.pool)
        return self.pool

    def stop(self) -> None:
        with self._lock:
            if self.pool is not None:
                self.pool.stop()


def _start_watch(runner, base_model, pool: WorkerPool) -> None:
    if not _watches:
        atexit.register(_end_watches)
    _watches[:] = [thread for thread in _watches if thread.is_alive()]
    thread = threading.Thread(target=_watch_unload, args=(weakref.ref(runner), weakref.ref(base_model), pool),
                              name="longcat-multi-gpu-unload-watch", daemon=True)
    _watches.append(thread)
    thread.start()


def _end_watches() -> None:
    _exiting.set()
    for thread in _watches:
        thread.join(5.0)


def _watch_unload(runner_ref, model_ref, pool: WorkerPool) -> None:
    """Stop ``pool`` once ComfyUI has fully unloaded the DiT (whichever MODEL clone loaded it)."""
    while pool.started and not _exiting.wait(_UNLOAD_POLL_S):
        runner, model = runner_ref(), model_ref()
        if runner is None:
            return  # the pool goes with the runner (its finalizer stops the workers)
        if model is not None and (model.model_loaded_weight_memory > 0 or _prompt_running()):
            continue
        if runner._lock.acquire(blocking=False):  # busy: a DiT call is running, so it is loaded
            try:
                if runner.pool is pool and pool.started:
                    log.info("LongCat Multi-GPU: the DiT was unloaded; stopping the worker processes")
                    pool.stop()
            finally:
                runner._lock.release()


def _prompt_running() -> bool:
    """Whether ComfyUI's server is executing a prompt (False without a server, e.g. in-process
    use). Reads ComfyUI's already-imported top-level ``server`` module; never imports it."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    return bool(getattr(getattr(instance, "prompt_queue", None), "currently_running", None))


def _warn_if_attention_differs(dit) -> bool:
    """Workers run dense attention on PyTorch SDPA (ComfyUI's default on CUDA); another backend
    on the first GPU (--use-sage-attention, xformers, ...) makes its heads differ by rounding."""
    name = getattr(dit.blocks[0].attn.attention, "__name__", "?")
    if name not in ("attention_pytorch", "sdpa_attention"):
        log.warning("LongCat Multi-GPU: ComfyUI's attention backend is %s; the worker GPUs use PyTorch "
                    "SDPA, so their attention heads differ from a one-GPU run by rounding", name)
        return True
    return False


def dit_config(base_model) -> dict:
    """The DiT constructor's arguments from the model config (what the workers build)."""
    return {k: v for k, v in base_model.model_config.unet_config.items() if k in _DIT_ARGS}


def _load_whole(base_model) -> None:
    """Workers take rank 0's weights with patches applied: only a full load has them in place."""
    for loaded in comfy.model_management.current_loaded_models:
        if loaded.model.model is base_model:
            comfy.model_management.load_models_gpu([loaded.model], force_full_load=True)
            break
    if base_model.model_lowvram:
        raise RuntimeError("LongCat Multi-GPU needs the whole DiT on the first GPU, but ComfyUI could "
                           "load only part of it (not enough free VRAM); free VRAM or use fp8 weights")


class LongCatMultiGPU(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatMultiGPU",
            display_name="LongCat Multi-GPU",
            category="LongCat",
            description="Runs every DiT step of this MODEL on several GPUs at once (context "
                        "parallel: each GPU takes part of the video's tokens). Same result as one "
                        "GPU, BSA included. Each GPU holds a full copy of the DiT; this ComfyUI "
                        "process drives the first GPU and starts a worker process per other GPU "
                        "(Linux, NCCL).",
            inputs=[
                io.Model.Input("model", tooltip="A LongCat-Video MODEL (LoRA and BSA Settings nodes "
                                                "may sit before or after this node)."),
                io.Int.Input("gpus", default=2, min=1, max=16,
                             tooltip="GPUs to use, the MODEL's GPU first, then the next ones in "
                                     "CUDA order. Must divide the DiT's 32 attention heads: 2, 4, "
                                     "8 or 16. 1 turns multi-GPU off."),
                io.Int.Input("timeout", default=300, min=10, max=3600,
                             tooltip="Seconds a GPU may stall before the run stops with an error "
                                     "(a worker that dies is reported within about 2 s)."),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL running on the given GPUs (a clone).")],
        )

    @classmethod
    def execute(cls, model, gpus: int, timeout: int) -> io.NodeOutput:
        check_longcat(model)
        patched = model.clone()
        opts = patched.model_options.setdefault("transformer_options", {})
        opts.pop(MULTI_GPU_OPTIONS_KEY, None)
        if gpus > 1:
            check_world_size(model.model.diffusion_model.num_heads, gpus)
            pick_devices(model.load_device, gpus)  # enough GPUs? fail here, not mid-run
            opts[MULTI_GPU_OPTIONS_KEY] = MultiGPURunner(gpus, float(timeout))
        log.info("LongCat Multi-GPU: %s", f"{gpus} GPUs" if gpus > 1 else "off")
        return io.NodeOutput(patched)


NODES = [LongCatMultiGPU]
