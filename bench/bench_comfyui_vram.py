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
        [--stages distill,refine] [--steps 3] [--refine-steps 2] [--time-budget 550]
        [--max-stage-s 330]
    python bench/bench_comfyui_vram.py --compare DIR [DIR ...]   # latents of several runs
    --tiny: the tests' tiny DiT at tiny sizes (the GPU test runs that); with --cpu the server
    runs on the CPU (a dry run of the whole path anywhere).
Writes ``<out>/comfyui_vram.json`` after every stage, ``<out>/server_logs.txt`` and
``<out>/latents_<case>.safetensors`` (480p latents, fp16) at the end of each case.
"""

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "harness"))
from comfy_server import ComfyServer
from comfyui_bench_metrics import (
    CLIENT_ID,
    GIB,
    EventLog,
    Monitor,
    dit_partial,
    gpu_info,
    node_timings,
    parse_log,
    step_timing,
)
from comfyui_bench_models import DIT_FILES, write_models
from comfyui_bench_report import (
    collect_latents,
    compare,
    compare_dirs,
    print_table,
    write_logs,
)
from comfyui_bench_stages import SAVE_LATENT_ID, STAGES, build_prompt, main_node_id

COMFY_DEFAULT_RESERVE_GIB = 400 / 1024  # ComfyUI's own reserve on Linux (model_management.py)
PROBE = Path(__file__).resolve().parent / "comfy_vram_probe"
# Seconds a stage needs at full size, to skip it rather than start it too late.
STAGE_MIN_S = {"distill": 90, "cfg480": 120, "continuation": 120, "refine": 240, "vae720": 90,
               "long_segment": 150}
SERVER_MIN_S = 60
STOP_MARGIN_S = 30  # left for interrupting (10 s), stopping the server (15 s) and writing results
RETURN_LATENTS = ("distill", "cfg480", "continuation")  # 480p latents fit the 16 MiB file limit


@dataclass(frozen=True)
class Case:
    budget_gib: float
    dit: str  # which file: "bf16" or "fp8"
    weight_dtype: str  # the loader's weight_dtype widget
    stages: tuple
    lowvram: bool = False
    fast: tuple = ()


def case_fields(case: Case) -> dict:
    """A case's settings for the results (its stage names go to ``stages_planned``)."""
    fields = asdict(case)
    return {**fields, "stages_planned": fields.pop("stages")}


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
    # Without --lowvram: in ComfyUI 0.3.64 the default mode also loads partially when needed.
    "24g_fp8": Case(24, "fp8", "fp8_e4m3fn", ("distill",)),
    # Every stage per card class (issue 20), ComfyUI's default mode (0.33: DynamicVRAM for the
    # models that use it; the pack's loader leaves room for its activation estimate), most
    # important stages first.
    "24g_fp8_all": Case(24, "fp8", "fp8_e4m3fn", ("refine", "continuation", "distill", "cfg480", "long_segment",
                                                        "vae720")),
    "16g_fp8_all": Case(16, "fp8", "fp8_e4m3fn", ("distill", "cfg480", "refine", "continuation", "vae720")),
    "12g_fp8_distill": Case(12, "fp8", "fp8_e4m3fn", ("distill", "cfg480", "vae720")),
    "80g_bf16_all": Case(80, "bf16", "default", ("refine", "continuation", "distill", "cfg480", "long_segment",
                                                 "vae720")),
}


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
            source = str(int(node_id) - SAVE_LATENT_ID)
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
    if stage == "long_segment":  # the first clip's steps, then the segment's
        steps = 2 * args.steps
    rec = {"stage": stage, "notes": notes, "main_node": main_id}
    offset = server.log_path.stat().st_size
    rec["peak_reset_error"] = server.post("/bench/vram/reset", {})[1].get("reset_error")
    monitor.set_label(stage)
    start = time.monotonic()
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": CLIENT_ID})
    if status != 200:
        return {**rec, "status": "rejected", "error": body}
    prompt_id = body["prompt_id"]
    try:
        limit = min(deadline - time.monotonic() - STOP_MARGIN_S, args.max_stage_s)
        entry = _wait_history(server, prompt_id, max(10.0, limit))
        if entry is None:
            rec["status"] = "timeout"
            server.post("/interrupt", {})
            entry = _wait_history(server, prompt_id, 10) or {}
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
    rec["activation_estimate"] = estimate_check(rec["log"], rec.get("vram", {}))
    rec["outputs"] = _outputs(server, entry)
    return rec


def estimate_check(log: dict, vram: dict) -> dict | None:
    """The pack's activation estimate for the stage's main forward (the last one it logged) next
    to PyTorch's peak above the DiT weights ComfyUI held: an upper bound of the DiT's activations
    (the stage's peak may also come from the VAE; bench/bench_dit_memory.py measures the DiT
    alone)."""
    estimates = log.get("activation_estimates") or []
    if not estimates or "max_allocated" not in vram:
        return None
    last = max(estimates, key=lambda e: e["estimate_gib"])
    above = vram["max_allocated"] - last["dit_loaded_gib"]
    return {**last, "peak_above_dit_gib": round(above, 3),
            "estimate_over_peak_above_dit": round(last["estimate_gib"] / above, 3) if above > 0 else None}


def _probe(server) -> dict:
    raw = server.get("/bench/vram")
    keys = ("allocated", "reserved", "max_allocated", "max_reserved", "outside_torch")
    out = {k: round(raw[k] / GIB, 3) for k in keys if k in raw}
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


def run_stages(rec: dict, stages, session, case: Case, args, deadline: float, save) -> None:
    """The case's stages in order on one server; a stage that would not fit in time is skipped."""
    server, events, monitor = session
    object_info = server.get("/object_info")
    for stage in stages:
        left = deadline - time.monotonic()
        need = 0 if args.tiny else STAGE_MIN_S[stage]
        if left < need + STOP_MARGIN_S:
            rec["stages"].append({"stage": stage, "status": "skipped",
                                  "error": f"{left:.0f}s left, stage needs ~{need}s"})
            continue
        try:
            rec["stages"].append(run_stage(server, events, monitor, rec["case"], case, stage,
                                           object_info, args, deadline))
        except (OSError, ValueError, KeyError) as err:  # the bench's own failure: recorded
            rec["stages"].append({"stage": stage, "status": "bench_error",
                                  "error": f"{type(err).__name__}: {err}"})
        save()
        if server.proc.poll() is not None:
            return


def run_case(rec: dict, case: Case, args, card_total, deadline: float, save) -> None:
    """Run one case's stages on a fresh server, filling ``rec`` (saved after every stage)."""
    name = rec["case"]
    only = args.case_stages.get(name) or args.stages
    stages = [s for s in case.stages if not only or s in only]
    options, env = server_setup(case, args, card_total)
    rec.update({**case_fields(case), "stages_run": stages, "server_options": options,
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
        rec["probe_at_start"] = server.get("/bench/vram")
        run_stages(rec, stages, (server, events, monitor), case, args, deadline, save)
    except Exception as err:  # noqa: BLE001 - recorded, the next case still runs
        rec["error"] = f"{type(err).__name__}: {err}"
        rec["log_tail"] = server.log_tail(80)
    finally:
        if monitor is not None:
            monitor.stop()
            rec["vmhwm_gib"] = round(monitor.vmhwm / GIB, 3)
        if events is not None:
            events.stop()
        server.stop(grace=5)
        rec["case_s"] = round(time.monotonic() - start, 1)
    if log_path.exists():
        rec["log_summary"] = parse_log(log_path.read_text(errors="replace"))


def environment(args) -> dict:
    version = re.search(r'"([^"]+)"', (args.comfyui / "comfyui_version.py").read_text())
    gpu = gpu_info()
    return {"torch": torch.__version__, "python": sys.version.split()[0],
            "comfyui": version.group(1) if version else None, "tiny": args.tiny, "cpu": args.cpu,
            "steps": args.steps, "refine_steps": args.refine_steps, "gpu": gpu.get("gpu"),
            "driver": gpu.get("driver"),
            "gpu_total_gib": round(gpu["gpu_total_bytes"] / GIB, 2) if gpu else None,
            "disk_free_gib": round(shutil.disk_usage(args.work).free / GIB, 1)}


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
    card_total = None if args.cpu else gpu_info().get("gpu_total_bytes")
    all_latents = {}
    for name in names:
        if deadline - time.monotonic() < (0 if args.tiny else SERVER_MIN_S) + STOP_MARGIN_S:
            results["cases"][name] = {"case": name, **case_fields(CASES[name]), "stages": [],
                                      "status": "skipped", "error": "time budget used up"}
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=ROOT / ".comfyui", help="ComfyUI tree")
    parser.add_argument("--out", type=Path, help="results folder ($OUT on the device)")
    parser.add_argument("--work", type=Path, help="models, server base dir, logs "
                        "(default /tmp/longcat_comfyui_bench[_tiny]); never under --out")
    parser.add_argument("--cases", default=",".join(list(CASES)[:5]),
                        help="comma-separated, in order, each 'case' or 'case:stage+stage' (only those "
                             f"stages of it); known: {', '.join(CASES)}")
    parser.add_argument("--stages", default="", help=f"only these of each case's stages ({', '.join(STAGES)})")
    parser.add_argument("--steps", type=int, default=3, help="sampler steps of the 480p stages")
    parser.add_argument("--refine-steps", type=int, default=2, help="DiT passes of the refinement")
    parser.add_argument("--time-budget", type=float, default=550.0,
                        help="seconds for everything; stages that would not fit are skipped")
    parser.add_argument("--max-stage-s", type=float, default=330.0,
                        help="a stage still running after this is interrupted (status timeout)")
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
    # "case" or "case:stage+stage" (that case runs only those of its stages, in its order).
    entries = [c.split(":", 1) for c in args.cases.split(",") if c]
    args.cases = [e[0] for e in entries]
    args.case_stages = {e[0]: e[1].split("+") for e in entries if len(e) == 2}
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {list(CASES)}")
    args.stages = [s for s in args.stages.split(",") if s]
    if any(s not in STAGES for s in args.stages + sum(args.case_stages.values(), [])):
        parser.error(f"stages must be among {list(STAGES)}")
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
