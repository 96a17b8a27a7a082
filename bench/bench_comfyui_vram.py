"""Which card runs which LongCat stage inside a real ComfyUI server, and how fast?

For each case (a memory budget with the settings a user of that card would pick) this starts a
real ComfyUI server with the pack, queues the bundled workflows' stages through ``/prompt``
(``comfyui_bench_stages``: full-size shapes, steps cut), and records per stage: completed or
the exact error, seconds per step, peak VRAM, host RAM peak, whether ComfyUI loaded the DiT
only partially (offloading the rest), and the output latents for fp8 / ``--fast`` comparisons.

The model files are random (``comfyui_bench_models``): the full-size DiT (bf16 and/or fp8
e4m3fn, the converter's layout), official-format LoRAs, the tests' random Wan 2.1 VAE; the text
encoder is the tests' stand-in node. Written once per machine (kept when already there).

A budget is what ComfyUI sees and what the process may take:
* ``--reserve-vram (card − budget + 0.4)`` GiB: ComfyUI plans as on a card of ``budget`` GiB
  (0.4 GiB is its default reserve on Linux);
* ``bench/comfy_vram_probe`` (linked into the server's custom_nodes): a hard cap through
  ``torch.cuda.set_per_process_memory_fraction`` on ComfyUI's own allocator, so PyTorch
  allocations plus the CUDA context stay within the budget; an overshoot is an OOM error.

Measured per stage:
* s/step: time between the sampler's (or refine node's) consecutive progress messages on the
  websocket, so model loading, VAE encoding and the first step's compilation are excluded;
  ``first_step_s`` (node start to first step done) and ``after_last_step_s`` (the refine node's
  VAE decode) hold the rest; every node's wall time is in ``nodes``.
* peak VRAM: PyTorch's peak allocated / reserved bytes in the server (probe route, reset before
  each stage) and the server process's memory as NVML reports it (polled, includes the context);
* host RAM: the server's RSS (anonymous and file-backed) polled, and its VmHWM;
* offloading: ComfyUI's "loaded partially / completely" log lines for the DiT and the models
  ComfyUI holds at the end of the stage (probe);
* errors: the ``execution_error`` ComfyUI reports (node, exception type and message).

Usage (on the GPU machine, ComfyUI's Python):
    python bench/bench_comfyui_vram.py --comfyui .comfyui --out $OUT --cases 24g_fp8_lowvram,...
        [--stages distill,refine] [--steps 3] [--refine-steps 2] [--time-budget 560]
    python bench/bench_comfyui_vram.py --compare DIR [DIR ...]   # latents of several runs
    --tiny: the tests' tiny DiT at tiny sizes (the GPU test runs that); with --cpu the server
    runs on the CPU (a dry run of the whole path anywhere).
Writes ``<out>/comfyui_vram.json`` after every stage, ``<out>/server_logs.txt`` and
``<out>/latents_<case>.safetensors`` (480p latents, fp16) at the end of each case.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
from comfy_server import ComfyServer
from comfyui_bench_models import DIT_FILES, write_models
from comfyui_bench_stages import STAGES, build_prompt, main_node_id

GIB = 2**30
CLIENT_ID = "longcat-vram-bench"
COMFY_DEFAULT_RESERVE_GIB = 0.4  # ComfyUI's own reserve on Linux (model_management.py)
PROBE = Path(__file__).resolve().parent / "comfy_vram_probe"
# Seconds a stage needs at full size, to skip it rather than start it too late.
STAGE_MIN_S = {"distill": 90, "cfg480": 120, "continuation": 120, "refine": 240}
SERVER_MIN_S = 60
STOP_MARGIN_S = 25  # left for interrupting, stopping the server and writing the results
RETURN_LATENTS = ("distill", "cfg480", "continuation")  # 480p latents fit the 16 MiB file limit


@dataclass(frozen=True)
class Case:
    budget_gib: float
    dit: str  # which file: "bf16" or "fp8"
    weight_dtype: str  # the loader's weight_dtype widget
    stages: tuple
    lowvram: bool = False
    fast: tuple = ()


CASES = {
    # 24 GB (RTX 3090 / 4090): fp8 weights and --lowvram, as the README advises.
    "24g_fp8_lowvram": Case(24, "fp8", "fp8_e4m3fn", ("distill", "refine"), lowvram=True),
    # 48 GB (RTX 6000 Ada / L40S / A6000): bf16 480p with CFG, continuation with the KV cache.
    "48g_bf16": Case(48, "bf16", "default", ("cfg480", "continuation")),
    # 80 GB (A100 / H100): bf16 refinement with BSA (stage 1 first: the reference latents).
    "80g_bf16": Case(80, "bf16", "default", ("distill", "refine")),
    "48g_fp8_lowvram": Case(48, "fp8", "fp8_e4m3fn", ("distill", "refine"), lowvram=True),
    # ComfyUI's fp8 matrix multiplication (Hopper / Ada) on the same fp8 weights.
    "24g_fp8_lowvram_fast": Case(24, "fp8", "fp8_e4m3fn", ("distill",), lowvram=True,
                                 fast=("fp8_matrix_mult",)),
    # More, if device time is left.
    "24g_fp8_lowvram_cfg": Case(24, "fp8", "fp8_e4m3fn", ("cfg480", "continuation"), lowvram=True),
    "80g_fp8": Case(80, "fp8", "fp8_e4m3fn", ("distill",)),
    "80g_fp8_fast": Case(80, "fp8", "fp8_e4m3fn", ("distill",), fast=("fp8_matrix_mult",)),
    "48g_bf16_lowvram_refine": Case(48, "bf16", "default", ("distill", "refine"), lowvram=True),
}


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

    out = {"gpu_device_used": pynvml.nvmlDeviceGetMemoryInfo(handle).used}
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory:
            out["gpu_process_used"] = proc.usedGpuMemory
    return out


def gpu_total_bytes() -> int | None:
    handle = _nvml_handle()
    if handle is None:
        return None
    import pynvml

    return pynvml.nvmlDeviceGetMemoryInfo(handle).total


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
        ends = kind in ("executing", "execution_success", "execution_error", "execution_interrupted")
        if ends and current is not None:
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
    after = [t for t, k, d in events if start is not None and t > start
             and k in ("executing", "execution_success", "execution_error", "execution_interrupted")]
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


LOAD_LINE = re.compile(r"loaded (partially|completely) (\S+) (\S+) (\S+)")
REQUEST_LINE = re.compile(r"Requested to load (\S+)")
DIT_MODEL = "LongCatVideoModel"


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
    out["loads"] = loads
    out["dit_partially_loaded"] = any(x["model"] == DIT_MODEL and x["mode"] == "partially" for x in loads)
    return out


def _log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def _wait_history(server: ComfyServer, prompt_id: str, timeout: float):
    """The finished history entry, or None on timeout; raises if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited (code {server.proc.returncode})")
        try:
            entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        except (urllib.error.URLError, OSError):
            entry = None
        status = (entry or {}).get("status", {})
        if status.get("completed") is not None and status.get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    return None


def _error_of(entry: dict) -> dict | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return {"node_type": data.get("node_type"), "node_id": data.get("node_id"),
                    "exception_type": data.get("exception_type"),
                    "exception_message": str(data.get("exception_message", ""))[:3000],
                    "traceback_tail": "".join(data.get("traceback") or [])[-3000:]}
        if kind == "execution_interrupted":
            return {"exception_type": "interrupted", "node_type": data.get("node_type")}
    return None


def _outputs(server: ComfyServer, entry: dict) -> dict:
    """Latent files (by source node), saved videos and text outputs (BSA reports)."""
    latents, videos, texts = {}, [], []
    for node_id, output in entry.get("outputs", {}).items():
        for item in output.get("latents", []):
            source = str(int(node_id) - 1000)
            latents[source] = str(server.base_dir / "output" / item["subfolder"] / item["filename"])
        videos += [item["filename"] for item in output.get("images", []) if item["filename"].endswith(".mp4")]
        texts += ["".join(output["text"])] if "text" in output else []
    return {"latents": latents, "videos": videos, "texts": texts}


def run_stage(server, events, monitor, name: str, case: Case, stage: str, object_info: dict,
              args, deadline: float) -> dict:
    dit_file = DIT_FILES[case.dit]
    prompt, notes = build_prompt(stage, object_info, dit_file, case.weight_dtype, args.steps,
                                 args.refine_steps, f"bench/{name}", args.tiny)
    main_id = main_node_id(prompt, stage)
    steps = notes.get("refine_steps", args.steps) if stage == "refine" else args.steps
    rec = {"stage": stage, "notes": notes, "main_node": main_id}
    offset = server.log_path.stat().st_size
    server.post("/bench/vram/reset", {})
    monitor.set_label(stage)
    start = time.monotonic()
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": CLIENT_ID})
    if status != 200:
        return {**rec, "status": "rejected", "error": body}
    prompt_id = body["prompt_id"]
    try:
        entry = _wait_history(server, prompt_id, max(10.0, deadline - time.monotonic() - STOP_MARGIN_S))
        if entry is None:
            rec["status"] = "timeout"
            server.post("/interrupt", {})
            entry = _wait_history(server, prompt_id, 30) or {}
        else:
            rec["status"] = entry["status"]["status_str"]
    except RuntimeError as err:
        rec["status"], entry = "server_exited", {}
        rec["error"] = {"exception_type": "server_exited", "exception_message": str(err)}
    rec["prompt_s"] = round(time.monotonic() - start, 2)
    rec["error"] = rec.get("error") or _error_of(entry)
    ws = events.of_prompt(prompt_id)
    rec["timing"] = step_timing(ws, main_id, steps)
    rec["nodes"] = node_timings(ws, prompt)
    decode = [n["seconds"] for n in rec["nodes"] if n["class_type"] == "VAEDecode" and n.get("seconds")]
    rec["vae_decode_s"] = decode[-1] if decode else None
    if stage == "refine":  # stage 1's sampler, when it ran here rather than from the cache
        first = [i for i, n in prompt.items() if n["class_type"] == "LongCatSampler"]
        rec["stage1_timing"] = step_timing(ws, first[0], args.steps) if first else None
    if server.proc.poll() is None:
        rec["vram"] = _probe(server)
    rec["monitor_peak_gib"] = monitor.peak(stage)
    rec["log"] = parse_log(_log_since(server.log_path, offset))
    rec["dit_partially_loaded"] = dit_partial(rec["log"], rec.get("vram", {}))
    rec["outputs"] = _outputs(server, entry)
    return rec


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


def _probe(server) -> dict:
    raw = server.get("/bench/vram")
    out = {k: round(raw[k] / GIB, 3) for k in ("allocated", "reserved", "max_allocated", "max_reserved")
           if k in raw}
    out["models_at_end"] = [{"model": m["model"], "loaded_gib": round(m["loaded"] / GIB, 3),
                             "total_gib": round(m["total"] / GIB, 3)} for m in raw.get("models", [])]
    out["allocator"] = raw.get("allocator")
    return out


def server_setup(case: Case, args, card_total: int | None) -> tuple[list, dict]:
    """(ComfyUI options, environment) of a case: the budget as ComfyUI sees and enforces it."""
    options = ["--front-end-root", str(args.work / "frontend_stub")]
    env = {"LONGCAT_TEST_NODES": "1", "PYTHONUNBUFFERED": "1"}
    if args.cpu:
        options.append("--cpu")
        env["TRITON_INTERPRET"] = "1"
    elif card_total is not None:
        reserve = max(0.0, card_total / GIB - case.budget_gib) + COMFY_DEFAULT_RESERVE_GIB
        options += ["--reserve-vram", f"{reserve:.2f}"]
        env["LONGCAT_BENCH_VRAM_GIB"] = str(case.budget_gib)
    if case.lowvram and not args.cpu:  # ComfyUI refuses --lowvram together with --cpu
        options.append("--lowvram")
    if case.fast:
        options += ["--fast", *case.fast]
    return options, env


def run_case(rec: dict, case: Case, args, card_total, deadline: float, save) -> None:
    """Run one case's stages on a fresh server, filling ``rec`` (saved after every stage)."""
    name = rec["case"]
    stages = [s for s in case.stages if not args.stages or s in args.stages]
    options, env = server_setup(case, args, card_total)
    rec.update({**asdict(case), "stages_run": stages, "server_options": options,
                "budget_applied": not args.cpu and card_total is not None, "stages": []})
    log_path = args.work / "logs" / f"{name}.log"
    log_path.parent.mkdir(exist_ok=True)
    server = ComfyServer(args.comfyui, args.work / "base", extra_env=env, python=sys.executable,
                         args=options, log_path=log_path)
    events = monitor = None
    start = time.monotonic()
    try:
        server.start(timeout=max(30.0, min(300.0, deadline - time.monotonic() - STOP_MARGIN_S)))
        rec["server_start_s"] = round(time.monotonic() - start, 1)
        events = EventLog(server.url)
        events.start()
        if not events.connected.wait(30):
            raise RuntimeError("websocket did not connect")
        monitor = Monitor(server.proc.pid)
        monitor.start()
        object_info = server.get("/object_info")
        rec["probe_at_start"] = server.get("/bench/vram")
        for stage in stages:
            left = deadline - time.monotonic()
            need = 0 if args.tiny else STAGE_MIN_S[stage]
            if left < need + STOP_MARGIN_S:
                rec["stages"].append({"stage": stage, "status": "skipped",
                                      "error": f"{left:.0f}s left, stage needs ~{need}s"})
                continue
            rec["stages"].append(run_stage(server, events, monitor, name, case, stage,
                                           object_info, args, deadline))
            save()
            if server.proc.poll() is not None:
                break
    except Exception as err:  # noqa: BLE001 - recorded, the next case still runs
        rec["error"] = f"{type(err).__name__}: {err}"
        rec["log_tail"] = server.log_tail(80)
    finally:
        if monitor is not None:
            monitor.stop()
            rec["vmhwm_gib"] = round(monitor.vmhwm / GIB, 3)
        if events is not None:
            events.stop()
        server.stop(grace=10)
        rec["case_s"] = round(time.monotonic() - start, 1)
    if log_path.exists():
        rec["log_summary"] = parse_log(log_path.read_text(errors="replace"))


def collect_latents(rec: dict) -> dict:
    """{"stage/node": fp32 tensor} of a case's returned stages (480p latents)."""
    out = {}
    for stage in rec.get("stages", []):
        for node, path in (stage.get("outputs") or {}).get("latents", {}).items():
            if Path(path).is_file():
                out[f"{stage['stage']}/{node}"] = load_file(path)["latent_tensor"].float()
    return out


def compare(latents: dict, cases: dict) -> list:
    """Relative L2 difference of each case's latents to the bf16 run of the same stage node, and
    of a ``--fast`` case to the same weights without ``--fast``."""
    rows = []
    keys = {k for per_case in latents.values() for k in per_case}
    for key in sorted(keys):
        have = [c for c in latents if key in latents[c]]
        ref = next((c for c in have if cases[c]["dit"] == "bf16" and not cases[c]["fast"]), None)
        for name in have:
            refs = [ref] if ref and ref != name else []
            if cases[name]["fast"]:
                refs += [c for c in have if not cases[c]["fast"] and c != ref
                         and (cases[c]["dit"], cases[c]["budget_gib"], cases[c]["lowvram"])
                         == (cases[name]["dit"], cases[name]["budget_gib"], cases[name]["lowvram"])]
            for other in refs:
                a, b = latents[name][key], latents[other][key]
                rows.append({"latent": key, "case": name, "reference": other,
                             "rel_l2": (a - b).norm().item() / max(b.norm().item(), 1e-30),
                             "max_abs": (a - b).abs().max().item(),
                             "finite": bool(torch.isfinite(a).all())})
    return rows


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict) -> None:
    print(f"\n{'case':24} {'stage':12} {'status':9} {'steps':>5} {'s/step':>7} {'1st':>6} "
          f"{'after':>6} {'decode':>6} {'torchG':>7} {'procG':>6} {'ramG':>6} {'DiT':8}")
    for name, case in results["cases"].items():
        for st in case.get("stages", []):
            timing, vram = st.get("timing", {}), st.get("vram", {})
            peak = st.get("monitor_peak_gib", {})
            dit = {True: "partial", False: "full"}.get(st.get("dit_partially_loaded"), "-")
            print(f"{name:24} {st['stage']:12} {st.get('status', '?'):9} "
                  f"{timing.get('steps_done', 0):>5} {_fmt(timing.get('s_per_step')):>7} "
                  f"{_fmt(timing.get('first_step_s'), '.1f'):>6} "
                  f"{_fmt(timing.get('after_last_step_s'), '.1f'):>6} {_fmt(st.get('vae_decode_s'), '.1f'):>6} "
                  f"{_fmt(vram.get('max_allocated')):>7} {_fmt(peak.get('gpu_process_used')):>6} "
                  f"{_fmt(peak.get('rss_anon')):>6} {dit:8}")
            if st.get("error"):
                err = st["error"]
                text = err if isinstance(err, str) else f"{err.get('exception_type')}: {err.get('exception_message')}"
                print(f"{'':24}   error: {str(text).strip().splitlines()[0][:150] if str(text).strip() else ''}")
        if case.get("error"):
            print(f"{name:24} case error: {case['error'][:200]}")
    for row in results.get("comparisons", []):
        print(f"latent {row['latent']:20} {row['case']:24} vs {row['reference']:24} rel L2 "
              f"{row['rel_l2']:.4f} max|d| {row['max_abs']:.3g} finite {row['finite']}")


def write_logs(out: Path, work: Path, names) -> None:
    """All server logs in one file, runs of identical lines collapsed (the fp8 fallback repeats)."""
    with open(out / "server_logs.txt", "w") as dst:
        for name in names:
            path = work / "logs" / f"{name}.log"
            if not path.exists():
                continue
            dst.write(f"\n===== {name} =====\n")
            previous, repeats = None, 0
            for line in path.read_text(errors="replace").splitlines():
                if line == previous:
                    repeats += 1
                    continue
                if repeats:
                    dst.write(f"[previous line repeated {repeats} more times]\n")
                dst.write(line + "\n")
                previous, repeats = line, 0
            if repeats:
                dst.write(f"[previous line repeated {repeats} more times]\n")


def environment(args) -> dict:
    version = re.search(r'"([^"]+)"', (args.comfyui / "comfyui_version.py").read_text())
    env = {"torch": torch.__version__, "python": sys.version.split()[0],
           "comfyui": version.group(1) if version else None, "tiny": args.tiny, "cpu": args.cpu,
           "steps": args.steps, "refine_steps": args.refine_steps}
    handle = _nvml_handle()
    env["gpu"] = None
    if handle is not None:
        import pynvml

        env["gpu"] = pynvml.nvmlDeviceGetName(handle)
        env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        env["gpu_total_gib"] = round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / GIB, 2)
    env["disk_free_gib"] = round(shutil.disk_usage(args.work).free / GIB, 1)
    return env


def prepare(args, kinds) -> dict:
    """Base directory (pack + probe in custom_nodes, frontend stub) and the model files, written
    in a child process so its CUDA context is gone before any server starts."""
    base = args.work / "base"
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    if not (nodes / PROBE.name).exists():
        (nodes / PROBE.name).symlink_to(PROBE, target_is_directory=True)
    stub = args.work / "frontend_stub"
    stub.mkdir(exist_ok=True)
    (stub / "index.html").write_text("<html><body>LongCat VRAM bench (no frontend)</body></html>\n")
    start = time.monotonic()
    cmd = [sys.executable, __file__, "--write-models", "--work", str(args.work), "--comfyui",
           str(args.comfyui), "--kinds", ",".join(sorted(kinds))] + (["--tiny"] if args.tiny else [])
    subprocess.run(cmd, check=True)
    info = json.loads((args.work / "models.json").read_text())
    return {**info, "seconds": round(time.monotonic() - start, 1)}


def free_disk_for(args, kinds) -> None:
    """Remove DiT files of other kinds when the disk cannot hold the ones this run needs."""
    sizes = {"bf16": 27.3 * 1e9, "fp8": 13.7 * 1e9}
    folder = args.work / "base" / "models" / "diffusion_models"
    missing = sum(sizes[k] for k in kinds if not (folder / DIT_FILES[k]).exists()) + 4e9
    args.work.mkdir(parents=True, exist_ok=True)
    if args.tiny or shutil.disk_usage(args.work).free > missing:
        return
    for kind, file in DIT_FILES.items():
        if kind not in kinds and (folder / file).exists():
            (folder / file).unlink()
            print(f"removed {file} to make room", flush=True)


def run(args) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    names = args.cases
    results = {"environment": environment(args), "cases": {}, "comparisons": []}
    path = out / "comfyui_vram.json"

    def save():
        path.write_text(json.dumps(results, indent=1))

    start = time.monotonic()
    deadline = start + args.time_budget
    kinds = {CASES[n].dit for n in names}
    free_disk_for(args, kinds)
    save()
    results["models"] = prepare(args, kinds)
    save()
    card_total = None if args.cpu else gpu_total_bytes()
    all_latents = {}
    for name in names:
        if deadline - time.monotonic() < (0 if args.tiny else SERVER_MIN_S) + STOP_MARGIN_S:
            results["cases"][name] = {"case": name, **asdict(CASES[name]), "status": "skipped",
                                      "error": "time budget used up"}
            continue
        results["cases"][name] = rec = {"case": name}
        run_case(rec, CASES[name], args, card_total, deadline, save)
        latents = collect_latents(rec)
        all_latents[name] = latents
        returned = {k: v.half() for k, v in latents.items() if k.split("/")[0] in RETURN_LATENTS
                    and v.abs().max() < 6e4}
        if returned:
            save_file({k: v.contiguous() for k, v in returned.items()}, str(out / f"latents_{name}.safetensors"))
        write_logs(out, args.work, names)
        save()
    results["comparisons"] = compare(all_latents, results["cases"])
    results["total_s"] = round(time.monotonic() - start, 1)
    save()
    return results


def compare_dirs(dirs) -> dict:
    """``--compare``: latents returned by several runs (their ``latents_*.safetensors``)."""
    cases, latents = {}, {}
    for folder in map(Path, dirs):
        results = json.loads((folder / "comfyui_vram.json").read_text())
        for name, rec in results["cases"].items():
            file = folder / f"latents_{name}.safetensors"
            if file.is_file() and "dit" in rec:
                cases[name] = rec
                latents[name] = {k: v.float() for k, v in load_file(str(file)).items()}
    return {"cases": {}, "comparisons": compare(latents, cases)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=ROOT / ".comfyui", help="ComfyUI tree")
    parser.add_argument("--out", type=Path, help="results folder ($OUT on the device)")
    parser.add_argument("--work", type=Path, help="models, server base dir, logs "
                        "(default /tmp/longcat_comfyui_bench[_tiny]); never under --out")
    parser.add_argument("--cases", default=",".join(list(CASES)[:5]),
                        help=f"comma-separated, in order; known: {', '.join(CASES)}")
    parser.add_argument("--stages", default="", help=f"only these of each case's stages ({', '.join(STAGES)})")
    parser.add_argument("--steps", type=int, default=3, help="sampler steps of the 480p stages")
    parser.add_argument("--refine-steps", type=int, default=2, help="DiT passes of the refinement")
    parser.add_argument("--time-budget", type=float, default=560.0,
                        help="seconds for everything; stages that would not fit are skipped")
    parser.add_argument("--tiny", action="store_true",
                        help="the tests' tiny DiT at tiny sizes (a smoke test of the whole path)")
    parser.add_argument("--cpu", action="store_true",
                        help="server on the CPU (--cpu, Triton interpreted, no budgets): dry run")
    parser.add_argument("--compare", nargs="+", metavar="DIR", help="compare the latents of runs")
    parser.add_argument("--write-models", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kinds", default="bf16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:
        results = compare_dirs(args.compare)
        print_table(results)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "comparisons.json").write_text(json.dumps(results["comparisons"], indent=1))
        return 0
    args.work = args.work or Path("/tmp/longcat_comfyui_bench" + ("_tiny" if args.tiny else ""))
    args.comfyui = args.comfyui.resolve()
    if args.write_models:
        info = write_models(args.work / "base", args.kinds.split(","), args.tiny, args.comfyui,
                            sys.executable)
        (args.work / "models.json").write_text(json.dumps(info, indent=1))
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {list(CASES)}")
    args.stages = [s for s in args.stages.split(",") if s]
    if any(s not in STAGES for s in args.stages):
        parser.error(f"--stages must be among {list(STAGES)}")
    if args.cpu and not args.tiny:
        parser.error("--cpu runs only with --tiny (the full-size DiT on a CPU takes hours)")
    if not (args.comfyui / "main.py").is_file():
        parser.error(f"--comfyui {args.comfyui} is not a ComfyUI tree (no main.py)")
    # A stop request (SIGTERM) unwinds through the finally blocks, which stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
