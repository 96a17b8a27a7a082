"""What core's EasyCache saves on LongCat inside a real ComfyUI server: DiT calls and seconds.

One server, one random full-size DiT (``comfyui_bench_models``, the VRAM bench's files and work
folder, so files written by either bench are reused), text from the tests' stand-in node. The
same 480p text-to-video sampling (832×480, 93 frames, stock KSampler, Euler, ``simple``
schedule, cfg 1: one DiT call per step, as the distilled 16-step pass) runs without and with
the stock ``EasyCache`` node (once per ``--reuse-thresholds`` value; its other settings default),
after a 1-step warm-up that loads the DiT. Per run: wall seconds of the prompt (KSampler +
SaveLatent; loaders and text are cached by ComfyUI) and the DiT calls EasyCache skipped (its
own log line). The weights are random: this shows that the cache runs and what it saves, not
what it does to quality; the relative difference of the latents is recorded for reference.

Usage (on the GPU machine, ComfyUI's Python):
    python bench/bench_comfyui_easycache.py --comfyui .comfyui --out $OUT [--steps 16]
        [--dit bf16|fp8] [--reuse-thresholds 0.2,0.5] [--start-percent 0.15] [--end-percent 0.95]
    --tiny --cpu: the tests' tiny DiT at a tiny size on the CPU (a dry run of the whole path).
Writes ``<out>/comfyui_easycache.json`` and ``<out>/easycache_server_log.txt``.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_comfyui_vram as vram_bench  # noqa: E402 - puts tests/comfyui on sys.path
from comfy_server import ComfyServer  # noqa: E402
from comfyui_bench_metrics import gpu_info  # noqa: E402
from comfyui_bench_models import DIT_FILES  # noqa: E402

SIZE = {"width": 832, "height": 480, "length": 93}
TINY_SIZE = {"width": 64, "height": 32, "length": 9}
SKIPPED_LINE = re.compile(r"EasyCache - skipped (\d+)/(\d+) steps")


def build_prompt(dit_file: str, size: dict, steps: int, seed: int, easycache: dict | None) -> dict:
    """API prompt: LongCat loader (→ EasyCache) → KSampler on an empty 480p latent → SaveLatent."""
    model = ["1", 0]
    prompt = {
        "1": {"class_type": "LongCatModelLoader",
              "inputs": {"model_name": dit_file, "weight_dtype": "default"}},
        "2": {"class_type": "LongCatTestTextEncode", "inputs": {"text": "a cat on the grass", "tokens": 64}},
        "3": {"class_type": "LongCatTestTextEncode", "inputs": {"text": "", "tokens": 1}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**size, "batch_size": 1}},
    }
    if easycache is not None:
        prompt["6"] = {"class_type": "EasyCache", "inputs": {"model": model, **easycache, "verbose": False}}
        model = ["6", 0]
    prompt["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["4", 0], "denoise": 1.0}}
    prompt["7"] = {"class_type": "SaveLatent",
                   "inputs": {"samples": ["5", 0], "filename_prefix": f"easycache_bench/{'on' if easycache else 'off'}_{steps}"}}
    return prompt


def _seconds(entry: dict) -> float:
    """Prompt wall time from ComfyUI's own execution_start / execution_success timestamps (ms)."""
    stamps = {name: data["timestamp"] for name, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def _latent(server: ComfyServer, entry: dict) -> torch.Tensor:
    item = entry["outputs"]["7"]["latents"][0]
    path = server.base_dir / "output" / item["subfolder"] / item["filename"]
    return load_file(str(path))["latent_tensor"].float()


def run_one(server: ComfyServer, prompt: dict, timeout: float) -> dict:
    offset = len(server.log_text())
    entry = server.run(prompt, timeout=timeout)
    found = SKIPPED_LINE.findall(server.log_text()[offset:])
    steps = prompt["5"]["inputs"]["steps"]
    skipped = int(found[-1][0]) if found else 0
    return {"steps": steps, "easycache_log": bool(found), "dit_calls": steps - skipped,
            "skipped": skipped, "seconds": round(_seconds(entry), 2), "entry": entry}


def run(args) -> dict:
    kind = args.dit
    vram_args = argparse.Namespace(work=args.work, comfyui=args.comfyui, tiny=args.tiny)
    vram_bench.free_disk_for(vram_args, {kind})
    models = vram_bench.prepare(vram_args, {kind})  # writes the DiT once (kept when present)
    options = ["--front-end-root", str(args.work / "frontend_stub"), "--preview-method", "none"]
    env = {"LONGCAT_TEST_NODES": "1", "PYTHONUNBUFFERED": "1"}
    if args.cpu:
        options.append("--cpu")
        env["TRITON_INTERPRET"] = "1"
    size = TINY_SIZE if args.tiny else SIZE
    caches = {f"easycache {t}": {"reuse_threshold": t, "start_percent": args.start_percent,
                                 "end_percent": args.end_percent} for t in args.reuse_thresholds}
    log_path = args.work / "logs" / "easycache.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    version = re.search(r'"([^"]+)"', (args.comfyui / "comfyui_version.py").read_text())
    results = {"environment": {"torch": torch.__version__, "gpu": gpu_info().get("gpu"),
                               "comfyui": version.group(1) if version else None,
                               "tiny": args.tiny, "cpu": args.cpu},
               "dit": kind, "models_s": models["seconds"], "size": size, "easycache": caches,
               "sampler": "KSampler euler / simple, cfg 1 (one DiT call per step)", "runs": {}}
    with ComfyServer(args.comfyui, args.work / "base", extra_env=env, python=sys.executable,
                     args=options, log_path=log_path) as server:
        started = time.monotonic()
        results["runs"]["warmup"] = run_one(server, build_prompt(DIT_FILES[kind], size, 1, 0, None),
                                            args.max_run_s)
        results["warmup_s"] = round(time.monotonic() - started, 1)
        for name, cache in (("off", None), *caches.items()):
            results["runs"][name] = run_one(
                server, build_prompt(DIT_FILES[kind], size, args.steps, 1, cache), args.max_run_s)
        off = _latent(server, results["runs"]["off"]["entry"])
        for name in caches:
            run_ = results["runs"][name]
            on = _latent(server, run_["entry"])
            run_["latent_rel_diff"] = round(((on - off).norm() / off.norm()).item(), 4)
            run_["speedup"] = round(results["runs"]["off"]["seconds"] / run_["seconds"], 2)
        for run_ in results["runs"].values():
            del run_["entry"]
        (args.out / "easycache_server_log.txt").write_text(server.log_text())
    return results


def print_table(results: dict) -> None:
    size = results["size"]
    print(f"\nEasyCache on LongCat ({results['dit']}, {size['width']}x{size['height']}x"
          f"{size['length']}, {results['sampler']}; {results['environment']['gpu'] or 'CPU'})")
    print("| run | steps | DiT calls | skipped | seconds per video | speed-up | latent rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results["runs"].items():
        if name != "warmup":
            print(f"| {name} | {r['steps']} | {r['dit_calls']} | {r['skipped']} | {r['seconds']:.1f} "
                  f"| {r.get('speedup', 1.0)} | {r.get('latent_rel_diff', 0.0)} |")
    print("latent rel. diff: against the run without cache (random weights: not a quality measure)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=vram_bench.ROOT / ".comfyui", help="ComfyUI tree")
    parser.add_argument("--out", type=Path, required=True, help="results folder ($OUT on the device)")
    parser.add_argument("--work", type=Path, help="models, server base dir, logs "
                        "(default: the VRAM bench's, /tmp/longcat_comfyui_bench[_tiny])")
    parser.add_argument("--steps", type=int, default=16, help="sampler steps per video")
    parser.add_argument("--dit", choices=sorted(DIT_FILES), default="bf16")
    parser.add_argument("--reuse-thresholds", default="0.2",
                        help="comma-separated EasyCache reuse_threshold values, one run each")
    parser.add_argument("--start-percent", type=float, default=0.15)
    parser.add_argument("--end-percent", type=float, default=0.95)
    parser.add_argument("--max-run-s", type=float, default=300.0, help="timeout of one video")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny DiT at a tiny size")
    parser.add_argument("--cpu", action="store_true", help="server on the CPU (with --tiny)")
    args = parser.parse_args(argv)
    args.reuse_thresholds = [float(t) for t in args.reuse_thresholds.split(",") if t]
    if args.cpu and not args.tiny:
        parser.error("--cpu runs only with --tiny")
    args.work = args.work or Path("/tmp/longcat_comfyui_bench" + ("_tiny" if args.tiny else ""))
    args.comfyui = args.comfyui.resolve()
    if not (args.comfyui / "main.py").is_file():
        parser.error(f"--comfyui {args.comfyui} is not a ComfyUI tree (no main.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (args.out / "comfyui_easycache.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
