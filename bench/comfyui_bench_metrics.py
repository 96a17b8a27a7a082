"""What the VRAM bench reads from a running ComfyUI server (``bench_comfyui_vram.py``).

* ``Monitor``: the server process's RSS (anonymous / file-backed, from /proc) and GPU memory
  (NVML: the process and the device), polled, peaks kept per stage.
* ``EventLog``: the websocket messages of our client id with their arrival times;
  ``node_timings`` and ``step_timing`` turn them into per-node wall times and seconds per step.
* ``parse_log``: ComfyUI's log lines about loading (partially / completely), VAE tiled
  fallbacks, fp8 matmul fallbacks, OOM unloads and errors.
"""

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from pathlib import Path

GIB = 2**30
CLIENT_ID = "longcat-vram-bench"
DIT_MODEL = "LongCatVideoModel"
LOAD_LINE = re.compile(r"loaded (partially|completely) (\S+) (\S+) (\S+)")
REQUEST_LINE = re.compile(r"Requested to load (\S+)")
STAGE_END = ("executing", "execution_success", "execution_error", "execution_interrupted")


class Monitor(threading.Thread):
    """Polls the server's RSS (/proc) and GPU memory (NVML) and keeps the peaks per label."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.label, self.peaks, self.vmhwm = None, {}, 0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._nvml = _nvml_handle()

    def set_label(self, label: str) -> None:
        with self._lock:
            self.label = label
            self.peaks[label] = {}

    def peak(self, label: str) -> dict:
        with self._lock:
            return {k: round(v / GIB, 3) for k, v in self.peaks.get(label, {}).items()}

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            sample = _proc_memory(self.pid)
            if not sample:
                return  # the process is gone
            self.vmhwm = max(self.vmhwm, sample.pop("vmhwm", 0))
            sample.update(_gpu_memory(self._nvml, self.pid))
            with self._lock:
                peaks = self.peaks.setdefault(self.label, {})
                for key, value in sample.items():
                    peaks[key] = max(peaks.get(key, 0), value)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _nvml_handle():
    """NVML's handle of GPU 0, or None without NVML (CPU dry run: GPU memory is not polled)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except pynvml.NVMLError:
        return None


def _proc_memory(pid: int) -> dict:
    fields = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "vmhwm"}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = int(value.split()[0]) * 1024
    return out


def _gpu_memory(handle, pid: int) -> dict:
    if handle is None:
        return {}
    import pynvml

    try:
        out = {"gpu_device_used": pynvml.nvmlDeviceGetMemoryInfo(handle).used}
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory:
                out["gpu_process_used"] = proc.usedGpuMemory
    except pynvml.NVMLError:  # a failed query skips this sample, the polling goes on
        return {}
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older pynvml returns bytes


def gpu_info() -> dict:
    """Name, driver and memory of GPU 0 from NVML (empty without NVML)."""
    handle = _nvml_handle()
    if handle is None:
        return {}
    import pynvml

    name, driver = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlSystemGetDriverVersion()
    return {"gpu": _text(name), "driver": _text(driver),
            "gpu_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(handle).total}


class EventLog(threading.Thread):
    """The server's websocket messages for our client id, each with its arrival time."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url.replace("http://", "ws://") + f"/ws?clientId={CLIENT_ID}"
        self.events = []
        self.connected = threading.Event()
        self._loop = self._ws = None

    def run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        import aiohttp

        self._loop = asyncio.get_running_loop()
        async with (aiohttp.ClientSession() as session,
                    session.ws_connect(self.url, heartbeat=30, max_msg_size=0) as ws):
            self._ws = ws
            self.connected.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    self.events.append((time.monotonic(), data.get("type"), data.get("data") or {}))

    def of_prompt(self, prompt_id: str) -> list:
        return [e for e in list(self.events) if e[2].get("prompt_id") == prompt_id]

    def stop(self) -> None:
        if self._loop is not None and self._ws is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError, TimeoutError):  # closed with the server
                asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(5)
        self.join(5)


def node_timings(events: list, prompt: dict) -> list:
    """Executed nodes in order with their wall time (start to the next node's start)."""
    nodes, current = [], None
    for t, kind, data in events:
        if kind in STAGE_END and current is not None:
            current["seconds"] = round(t - current.pop("_start"), 3)
            nodes.append(current)
            current = None
        if kind == "executing" and data.get("node") is not None:
            node_id = str(data["node"])
            current = {"id": node_id, "class_type": prompt.get(node_id, {}).get("class_type"), "_start": t}
        if kind == "execution_cached":
            nodes += [{"id": str(n), "class_type": prompt.get(str(n), {}).get("class_type"), "cached": True}
                      for n in data.get("nodes", [])]
    if current is not None:
        current.pop("_start")
        nodes.append({**current, "seconds": None, "unfinished": True})
    return nodes


def step_timing(events: list, node_id: str, steps: int) -> dict:
    """s/step of ``node_id`` from its progress messages with ``max == steps`` (a tiled VAE's own
    progress inside the refine node has another max)."""
    start = next((t for t, k, d in events if k == "executing" and str(d.get("node")) == node_id), None)
    after = [t for t, k, _ in events if start is not None and t > start and k in STAGE_END]
    end = after[0] if after else None
    done = [t for t, k, d in events if k == "progress" and str(d.get("node")) == node_id
            and d.get("max") == steps]
    intervals = [b - a for a, b in itertools.pairwise(done)]
    out = {"steps_done": len(done), "steps_planned": steps,
           "step_intervals_s": [round(x, 3) for x in intervals],
           "s_per_step": round(sum(intervals) / len(intervals), 3) if intervals else None,
           "first_step_s": round(done[0] - start, 3) if done and start is not None else None,
           "after_last_step_s": round(end - done[-1], 3) if done and end is not None else None}
    if out["s_per_step"] is not None and out["first_step_s"] is not None:
        out["before_first_step_s"] = round(out["first_step_s"] - out["s_per_step"], 3)
    return out




# nodes/runtime.py: the pack's activation estimate and how much of the DiT ComfyUI loaded.
ESTIMATE_LINE = re.compile(r"LongCat (.+): activation estimate ([\d.]+) GiB; DiT ([\d.]+) of ([\d.]+) GiB loaded on ")


def parse_log(text: str) -> dict:
    """What ComfyUI's log says about loading, offloading, fallbacks and errors."""
    loads, requested = [], None
    out = {"vae_tiled_fallback": [], "fp8_op_exceptions": 0, "fp8_op_exception_first": None,
           "oom_unloads": 0, "errors": [], "prompt_executed_s": [], "pack_loader": []}
    for line in text.splitlines():
        if m := REQUEST_LINE.search(line):
            requested = m.group(1)
        elif m := LOAD_LINE.search(line):
            loaded_mb = float(m.group(3))
            # Re-loads after a VAE pass log no "Requested" line: a multi-GB load is the DiT's.
            model = DIT_MODEL if loaded_mb > 1024 else requested
            loads.append({"model": model, "mode": m.group(1), "loaded_mb": round(loaded_mb),
                          "budget_mb": round(float(m.group(2))) if m.group(1) == "partially" else None})
        elif "retrying with tiled VAE" in line:
            out["vae_tiled_fallback"].append(line.strip())
        elif "Exception during fp8 op" in line:
            out["fp8_op_exceptions"] += 1
            out["fp8_op_exception_first"] = out["fp8_op_exception_first"] or line.strip()
        elif "Got an OOM" in line:
            out["oom_unloads"] += 1
        elif "!!! Exception during processing !!!" in line:
            out["errors"].append(line.strip())
        elif m := re.search(r"Prompt executed in ([\d.]+) seconds", line):
            out["prompt_executed_s"].append(float(m.group(1)))
        elif "LongCat-Video" in line and "weights" in line and "offload" in line:
            out["pack_loader"].append(line.strip())
        elif m := ESTIMATE_LINE.search(line):
            out.setdefault("activation_estimates", []).append(
                {"stage": m.group(1), "estimate_gib": float(m.group(2)), "dit_loaded_gib": float(m.group(3)),
                 "dit_total_gib": float(m.group(4))})
        elif "KV cache" in line and "LongCat Sampler" in line:
            out["kv_cache"] = line.split("LongCat Sampler: ", 1)[-1].strip()
    out["loads"] = loads
    out["dit_partially_loaded"] = any(x["model"] == DIT_MODEL and x["mode"] == "partially" for x in loads)
    return out


def dit_partial(log: dict, vram: dict) -> bool | None:
    """Whether ComfyUI held only part of the DiT on the GPU during the stage: a partial load in
    the log, else the state at the end of the stage; None when neither says."""
    loads = [x for x in log["loads"] if x["model"] == DIT_MODEL]
    if any(x["mode"] == "partially" for x in loads):
        return True
    held = [m for m in vram.get("models_at_end", []) if m["model"] == DIT_MODEL]
    if held:
        return held[0]["loaded_gib"] < held[0]["total_gib"] - 0.001
    return False if loads else None


