"""The LongCat Multi-GPU node's worker pool inside a real ComfyUI server: how long each part of
its life takes, what the errors say, and whether any process is left behind.

One ComfyUI server with the pack; API prompts (the test-only text node, no VAE) run the DiT
through ``LongCatMultiGPU`` (``--gpus`` GPUs: NCCL on CUDA; ``--cpu``: Gloo processes, for a dry
run) and the refine BSA preset, on a refine-size latent (704×1280, 189 frames: token grid
48×44×80; ``--tiny``: the tests' tiny DiT at 64×128). Phases, in order:

* ``first``: one sampling step from a cold start: model load, worker start, weight transfer,
  one forward on every rank;
* ``forward``: the same prompt again (new seed): one step with the workers and weights in place;
* ``cancel``: a long run interrupted (``/interrupt``) 1.5 step times after it started running
  (one step is the ``forward`` phase's wall time); the workers must stay;
* ``kill``: a long run whose last worker gets SIGKILL half a step time after it started (in
  the first forward); the error must name it and the workers must be gone;
* ``restart``: one step after the kill (workers start again, weights sent again);
* ``unload``: ``/free`` with ``unload_models``; the workers must be gone;
* ``fp8``: one step with the fp8 DiT (weights sent again, in fp8);
* ``exit``: the server stopped; no worker may be left.

Per phase: wall time, the prompt's status and error, the worker pids before / after, and what
the pool logged (start time, weights sent: count, GiB, seconds). Prints a table and writes
``multigpu_<card>x<gpus>_<date>.json`` into ``--out``.

NCCL cannot put two ranks on one GPU ("Duplicate GPU detected"), so on CUDA this needs at least
two visible GPUs; with fewer it writes the JSON with ``blocked`` and exits 0.

Usage (CUDA, ComfyUI's Python; the ComfyUI tree and wheels as for bench_comfyui_vram.py):
``python bench/bench_multigpu.py --comfyui .comfyui --out $OUT [--gpus 2] [--kinds bf16,fp8]``;
dry run: ``python bench/bench_multigpu.py --comfyui <ComfyUI> --out <dir> --tiny --cpu``.
"""

import argparse
import datetime
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "harness"))
from comfy_server import CPU_ARGS, ComfyServer, worker_pids  # noqa: E402
from comfyui_bench_models import DIT_FILES, TINY_DIT, write_dit  # noqa: E402

REFINE = {"width": 1280, "height": 704, "length": 189}  # latent 48×88×160: the refine grid
TINY = {"width": 128, "height": 64, "length": 9}
POOL_LOG = {
    "start_s": re.compile(r"LongCat context parallel: \d+ ranks \(\w+\) started in ([\d.]+) s"),
    "weights": re.compile(r"LongCat context parallel: sent (\d+) weights \(([\d.]+) MiB\) to (\d+) workers "
                          r"in ([\d.]+) s"),
}


def wait_until(condition, timeout: float, poll: float = 0.1) -> float | None:
    """Seconds until ``condition()`` held, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(poll)
    return None


WEIGHT_DTYPES = {"bf16": "bf16", "fp8": "fp8_e4m3fn"}  # the loader widget: fp8 stays fp8 in memory


def prompt(kind: str, gpus: int, steps: int, seed: int, size: dict, timeout: int) -> dict:
    """Loader → Multi-GPU → BSA (refine preset) → LongCat Sampler (no CFG) → its report."""
    return {
        "1": {"class_type": "LongCatModelLoader", "inputs": {"model_name": DIT_FILES[kind],
                                                             "weight_dtype": WEIGHT_DTYPES[kind]}},
        "2": {"class_type": "LongCatTestTextEncode", "inputs": {"text": "a cat walks on the grass", "tokens": 8}},
        "3": {"class_type": "LongCatMultiGPU", "inputs": {"model": ["1", 0], "gpus": gpus, "timeout": timeout}},
        "4": {"class_type": "LongCatBSASettings", "inputs": {
            "model": ["3", 0], "enable": True, "preset": "refine 720p", "sparsity": 0.9375, "cdf_threshold": 0.0,
            "chunk_q": "4,4,4", "chunk_k": "4,4,4", "start_percent": 0.0, "end_percent": 1.0,
            "dense_blocks": "", "backend": "auto"}},
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**size, "batch_size": 1}},
        "6": {"class_type": "LongCatScheduler", "inputs": {"mode": "normal", "steps": steps, "t_thresh": 0.5,
                                                           "shift": 12.0}},
        "7": {"class_type": "LongCatSampler", "inputs": {
            "model": ["4", 0], "positive": ["2", 0], "latent": ["5", 0], "sigmas": ["6", 0], "seed": seed,
            "guidance_scale": 1.0, "use_kv_cache": False, "offload_kv_cache": "gpu"}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}},
    }


def error_of(entry: dict) -> str | None:
    for kind, body in entry["status"].get("messages", []):
        if kind == "execution_error":
            return body.get("exception_message", "").strip()
        if kind == "execution_interrupted":
            return "interrupted"
    return None


class Lifecycle:
    def __init__(self, server: ComfyServer, args, size: dict, result: dict, out: Path):
        self.server, self.args, self.size = server, args, size
        self.result, self.out = result, out
        self.seed = 0
        self.log_offset = 0
        self.rows = []
        self.step_s = 1.0  # one step's wall time, from the ``forward`` phase

    def queue(self, kind: str, steps: int) -> str:
        self.seed += 1
        return self.server.queue_prompt(prompt(kind, self.args.gpus, steps, self.seed, self.size,
                                               self.args.timeout))

    def pool_log(self) -> dict:
        """What the pool logged since the last phase."""
        text = self.server.log_text()
        new, self.log_offset = text[self.log_offset:], len(text)
        found = {}
        if match := POOL_LOG["start_s"].search(new):
            found["start_s"] = float(match[1])
        if match := POOL_LOG["weights"].search(new):
            found["weights"] = {"count": int(match[1]), "mib": float(match[2]), "workers": int(match[3]),
                                "s": float(match[4])}
        return found

    def record(self, phase: str, started: float, entry: dict | None, before: list, **extra) -> dict:
        row = {"phase": phase, "wall_s": round(time.monotonic() - started, 2),
               "status": None if entry is None else entry["status"].get("status_str"),
               "error": None if entry is None else error_of(entry),
               "workers_before": before, "workers_after": worker_pids(self.server.proc.pid), **extra,
               **self.pool_log()}
        if entry is not None and "8" in entry.get("outputs", {}):
            row["bsa_report"] = "".join(entry["outputs"]["8"].get("text", []))[:400]
        self.rows.append(row)
        self.result["phases"] = self.rows
        self.out.write_text(json.dumps(self.result, indent=1))  # after every phase: partial runs survive
        print(json.dumps(row), flush=True)
        return row

    def one_step(self, phase: str, kind: str) -> dict:
        before, started = worker_pids(self.server.proc.pid), time.monotonic()
        entry = self.server.wait(self.queue(kind, 1), timeout=self.args.stage_timeout)
        return self.record(phase, started, entry, before)

    def running(self) -> bool:
        return bool(self.server.get("/queue")["queue_running"])

    def long_run(self, phase: str, action, after_steps: float) -> dict:
        """A long run; ``after_steps`` one-step times (the ``forward`` phase's) after it started
        running, ``action(worker pids)``; then wait for it to end."""
        before, started = worker_pids(self.server.proc.pid), time.monotonic()
        prompt_id = self.queue("bf16", 1000)
        wait_until(self.running, self.args.stage_timeout)
        time.sleep(after_steps * self.step_s)
        acted = time.monotonic()
        detail = action(worker_pids(self.server.proc.pid))
        entry = self.server.wait(prompt_id, timeout=self.args.stage_timeout)
        return self.record(phase, started, entry, before, acted_after_s=round(acted - started, 2),
                           ended_after_s=round(time.monotonic() - acted, 2), **detail)

    def cancel(self, pids):
        self.server.post("/interrupt", {})
        return {"action": "POST /interrupt"}

    def kill(self, pids):
        if not pids:
            return {"action": "no worker to kill"}
        os.kill(pids[-1], signal.SIGKILL)
        return {"action": f"SIGKILL worker pid {pids[-1]}",
                "workers_gone_after_s": wait_until(lambda: pids[-1] not in worker_pids(), 30.0)}

    def unload(self) -> dict:
        before, started = worker_pids(self.server.proc.pid), time.monotonic()
        self.server.post("/free", {"unload_models": True, "free_memory": True})
        gone = wait_until(lambda: not worker_pids(self.server.proc.pid), 60.0)
        return self.record("unload", started, None, before, workers_gone_after_s=gone)


def card_name() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    return next((c for c in ("h200", "h100", "a100", "l40s", "4090") if c in name), name.replace(" ", "_"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI tree (0.33)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON")
    parser.add_argument("--work", type=Path, default=Path("/tmp/longcat_multigpu_bench"),
                        help="models, the server's base directory and its log")
    parser.add_argument("--gpus", type=int, help="ranks (default: every visible GPU; --cpu: 2)")
    parser.add_argument("--kinds", default="bf16,fp8", help="DiT files: bf16, fp8 (the first runs the phases)")
    parser.add_argument("--timeout", type=int, default=300, help="the node's timeout widget, seconds")
    parser.add_argument("--stage-timeout", type=float, default=300.0, help="seconds per phase at most")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny DiT and a tiny latent")
    parser.add_argument("--cpu", action="store_true", help="ComfyUI --cpu, Gloo worker processes")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if args.gpus is None:
        args.gpus = 2 if args.cpu else torch.cuda.device_count()
    card = card_name() if not args.cpu else "cpu"
    result = {"card": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu else "cpu",
              "gpus": args.gpus, "world_size": args.gpus, "torch": torch.__version__, "tiny": args.tiny,
              "latent": TINY if args.tiny else REFINE, "kinds": kinds, "phases": []}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"multigpu_{card}x{args.gpus}_{datetime.date.today()}.json"
    if not args.cpu and args.gpus < 2:
        result["blocked"] = (f"{args.gpus} CUDA device(s) visible: the node needs 2 or more GPUs (NCCL refuses two "
                             "ranks on one GPU: 'Duplicate GPU detected')")
        out.write_text(json.dumps(result, indent=1))
        print(result["blocked"])
        return
    base = args.work / "base"
    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    device = "cpu" if args.cpu or args.tiny else "cuda"
    write_dit(models, kinds, TINY_DIT if args.tiny else {}, device)
    result["write_models_s"] = round(time.monotonic() - start, 1)
    server_args = CPU_ARGS if args.cpu else ("--preview-method", "none")
    server = ComfyServer(args.comfyui, base, extra_env={"LONGCAT_TEST_NODES": "1"}, args=server_args,
                         log_path=args.work / "server.log")
    started = time.monotonic()
    server.start()
    result["server_start_s"] = round(time.monotonic() - started, 1)
    life = Lifecycle(server, args, TINY if args.tiny else REFINE, result, out)
    try:
        life.one_step("first", kinds[0])
        life.step_s = life.one_step("forward", kinds[0])["wall_s"]
        life.long_run("cancel", life.cancel, after_steps=1.5)  # after the first step, in the second
        life.long_run("kill", life.kill, after_steps=0.5)  # in the middle of the first forward
        life.one_step("restart", kinds[0])
        life.unload()
        for kind in kinds[1:]:
            life.one_step(kind, kind)
    finally:
        server_pid = server.proc.pid
        started = time.monotonic()
        server.stop()
        life.rows.append({"phase": "exit", "wall_s": round(time.monotonic() - started, 2),
                          "workers_after": worker_pids(), "server_pid": server_pid})
        result["phases"] = life.rows
        result["pool_errors_in_log"] = [line for line in server.log_text().splitlines()
                                        if "LongCat multi-GPU" in line and "failed" in line][:10]
        out.write_text(json.dumps(result, indent=1))
    print(f"\n{result['card']}, {args.gpus} ranks, latent {result['latent']}; JSON {out}")
    print("| phase | wall s | status | error | workers before → after | pool log |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in result["phases"]:
        log = {k: row[k] for k in ("start_s", "weights") if k in row}
        error = (row.get("error") or "")[:90]
        print(f"| {row['phase']} | {row['wall_s']} | {row.get('status') or '-'} | {error} | "
              f"{row.get('workers_before', '-')} → {row['workers_after']} | {log or ''} |")


if __name__ == "__main__":
    main()
