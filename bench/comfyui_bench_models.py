"""Random model files for the real-ComfyUI VRAM bench, written the way users get them.

* The DiT with the official key names and shapes (``longcat.dit.LongCatVideoDiT``), random
  weights at fan-in scale, streamed tensor by tensor into ``longcat_video_dit_bf16.safetensors``
  and/or ``longcat_video_dit_fp8_e4m3fn.safetensors``. Both files use the converter's layout
  and cast rules (``longcat.weights.plan_tensors`` / ``weights.cast_tensor``: fp8 for 2-D Linear
  weights, bf16 for the rest), so the fp8 file is exactly what ``scripts/convert_longcat.py
  --dtype fp8_e4m3fn`` makes of the bf16 file. Each tensor comes from its own seeded generator,
  so either file can be written alone and the two always hold the same model.
* The distill and refinement LoRAs under the names the bundled workflows load (Kijai's files):
  official-format LoRAs (split up-projections for qkv / kv_linear, ``alpha_scale`` 0.5) on the
  10 Linears of every block, rank 128 in bf16 (about the size of the published LoRAs converted
  to bf16); the loader reads both layouts through the same path.
* The random full-size Wan 2.1 VAE of the real-ComfyUI tests (``harness/tiny_models.py``).
* ``input/input_video.mp4``: the clip the continuation workflow loads.

Tensors are generated on ``device`` (the GPU on the bench machine) and written one at a time,
so host RAM stays at about one tensor. A ``.stamp`` file next to each output records what was
written; an existing file with a matching stamp is kept.
"""

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))
sys.path.insert(0, str(ROOT))
import tiny_models

from _standalone import import_pack

import_pack()
from longcat_pack.longcat.convert import header_bytes, plan_header
from longcat_pack.longcat.dit import LongCatVideoDiT
from longcat_pack.longcat.lora import OFFICIAL_PREFIX, OFFICIAL_SEP
from longcat_pack.longcat.weights import TensorInfo, cast_tensor, plan_tensors

DIT_FILES = {"bf16": "longcat_video_dit_bf16.safetensors",
             "fp8": "longcat_video_dit_fp8_e4m3fn.safetensors"}
DIT_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
LORA_FILES = ("LongCat_distill_lora_alpha64_bf16.safetensors",
              "LongCat_refinement_lora_rank128_bf16.safetensors")
VAE_FILE = "wan_2.1_vae.safetensors"
VIDEO_FILE = "input_video.mp4"
LORA_RANK, TINY_LORA_RANK, LORA_ALPHA_SCALE = 128, 4, 0.5
# --tiny: the tests' tiny DiT, 128 wide so that its head_dim (64) takes the Triton BSA kernel.
TINY_DIT = {**tiny_models.DIT_CONFIG, "hidden_size": 128}
# The Linears a LoRA targets in each block, with the number of fused parts of the output.
LORA_TARGETS = {"attn.qkv": 3, "attn.proj": 1, "cross_attn.q_linear": 1, "cross_attn.kv_linear": 2,
                "cross_attn.proj": 1, "ffn.w1": 1, "ffn.w2": 1, "ffn.w3": 1,
                "adaLN_modulation.1": 1}


def _generator(seed: int, key: str, device) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def random_dit_tensor(key: str, shape, seed: int, device) -> torch.Tensor:
    """bf16 tensor for DiT key ``key``: weights N(0, 1/fan_in), norm weights ~1, biases ~0."""
    noise = torch.randn(shape, generator=_generator(seed, key, device), device=device)
    if len(shape) >= 2:
        noise = noise * math.prod(shape[1:]) ** -0.5
    elif key.endswith(".weight") and "norm" in key:
        noise = 1.0 + 0.02 * noise
    else:
        noise = 0.02 * noise
    return noise.to(torch.bfloat16)


def _write(path: Path, header: dict, plan: list, make) -> None:
    """Stream ``plan`` (``weights.PlannedTensor``s) into ``path``; ``make(key)`` gives each tensor."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as out:
            out.write(header_bytes(header))
            for entry in plan:
                tensor = cast_tensor(make(entry.key), entry.dtype).contiguous().cpu()
                out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _stamp_ok(path: Path, stamp: dict) -> bool:
    stamp_path = path.with_name(path.name + ".stamp")
    return (path.is_file() and stamp_path.is_file()
            and json.loads(stamp_path.read_text()) == {**stamp, "bytes": path.stat().st_size})


def _write_stamp(path: Path, stamp: dict) -> None:
    path.with_name(path.name + ".stamp").write_text(json.dumps({**stamp, "bytes": path.stat().st_size}))


def dit_shapes(config: dict) -> dict:
    return {k: tuple(v.shape) for k, v in LongCatVideoDiT(**config, device="meta").state_dict().items()}


def write_dit(folder: Path, kinds, config: dict, device, seed: int = 0) -> dict:
    """Write the DiT files of ``kinds`` (``bf16`` / ``fp8``) not already there → {kind: path}."""
    shapes = dit_shapes(config)
    infos = {k: TensorInfo(Path("random"), k, torch.bfloat16, s) for k, s in shapes.items()}
    stamp = {"config": config, "seed": seed}
    paths = {kind: folder / DIT_FILES[kind] for kind in kinds}
    todo = {kind: path for kind, path in paths.items() if not _stamp_ok(path, stamp)}
    if not todo:
        return paths
    plans = {kind: plan_tensors(infos, DIT_DTYPES[kind]) for kind in todo}
    partials = {kind: path.with_name(path.name + ".partial") for kind, path in todo.items()}
    start = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            handles = {kind: stack.enter_context(open(partials[kind], "wb")) for kind in todo}
            for kind, handle in handles.items():
                handle.write(header_bytes(plan_header(plans[kind])))
            order = [entry.key for entry in next(iter(plans.values()))]
            targets = {kind: {entry.key: entry.dtype for entry in plan} for kind, plan in plans.items()}
            for key in order:  # every layout has the same order: generate each tensor once
                tensor = random_dit_tensor(key, shapes[key], seed, device)
                for kind, handle in handles.items():
                    out = cast_tensor(tensor, targets[kind][key]).contiguous().cpu()
                    handle.write(out.reshape(-1).view(torch.uint8).numpy().data)
        for kind, path in todo.items():
            os.replace(partials[kind], path)
            _write_stamp(path, stamp)
    finally:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**30:.2f} GiB" for p in todo.values())
    print(f"wrote {sizes} in {time.monotonic() - start:.0f}s", flush=True)
    return paths


def lora_shapes(dit: dict, rank: int) -> dict:
    """Official-format LoRA keys → shapes for every block Linear in ``LORA_TARGETS``."""
    depth = 1 + max(int(k.split(".")[1]) for k in dit if k.startswith("blocks."))
    shapes = {}
    for block in range(depth):
        for target, parts in LORA_TARGETS.items():
            path = f"blocks.{block}.{target}"
            out, inp = dit[path + ".weight"]
            name = OFFICIAL_PREFIX + path.replace(".", OFFICIAL_SEP)
            shapes[name + ".lora_down.weight"] = (parts * rank, inp)
            if parts == 1:
                shapes[name + ".lora_up.weight"] = (out, rank)
            for i in range(parts if parts > 1 else 0):
                shapes[f"{name}.lora_up.blocks.{i}.weight"] = (out // parts, rank)
            shapes[name + ".alpha_scale"] = ()
    return shapes


def random_lora_tensor(key: str, shape, rank: int, seed: int, device) -> torch.Tensor:
    """down N(0, 1/in), up N(0, 0.2/√rank): with alpha_scale 0.5, ΔW is ~10% of a weight's scale."""
    if key.endswith(".alpha_scale"):
        return torch.tensor(LORA_ALPHA_SCALE, dtype=torch.float32)
    noise = torch.randn(shape, generator=_generator(seed, key, device), device=device)
    scale = shape[1] ** -0.5 if ".lora_down." in key else 0.2 * rank ** -0.5
    return (noise * scale).to(torch.bfloat16)


def write_loras(folder: Path, config: dict, rank: int, device, seed: int = 1) -> list:
    shapes = lora_shapes(dit_shapes(config), rank)
    dtypes = {k: torch.float32 if not s else torch.bfloat16 for k, s in shapes.items()}
    infos = {k: TensorInfo(Path("random"), k, dtypes[k], s) for k, s in shapes.items()}
    plan = plan_tensors(infos)
    header = plan_header(plan)
    paths = []
    for i, name in enumerate(LORA_FILES):
        path, stamp = folder / name, {"config": config, "rank": rank, "seed": seed + i}
        if not _stamp_ok(path, stamp):
            _write(path, header, plan, lambda key, s=seed + i: random_lora_tensor(key, shapes[key], rank, s, device))
            _write_stamp(path, stamp)
        paths.append(path)
    return paths


def write_vae(folder: Path, comfyui_dir: Path, python: str) -> Path:
    """The tests' random full-size Wan 2.1 VAE (ComfyUI's own class; needs ComfyUI's Python)."""
    path = folder / VAE_FILE
    if _stamp_ok(path, {"vae": "wan2.1 random seed 0"}):
        return path
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import tiny_models; "
            "tiny_models.write_vae(Path(sys.argv[2])); "
            "Path(sys.argv[2], tiny_models.VAE_FILE).rename(Path(sys.argv[2], sys.argv[3]))")
    tests = Path(tiny_models.__file__).parent
    subprocess.run([python, "-c", code, str(tests), str(folder), VAE_FILE], cwd=comfyui_dir, check=True)
    _write_stamp(path, {"vae": "wan2.1 random seed 0"})
    return path


def write_input_video(folder: Path, frames: int = 17, width: int = 832, height: int = 480) -> Path:
    """A moving-bar clip for the continuation workflow's LoadVideo (needs PyAV, ComfyUI's Python)."""
    import av
    import numpy as np

    path = folder / VIDEO_FILE
    if path.is_file():
        return path
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : (i + 1) * width // frames] = (30, 160, 90)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def write_models(base: Path, kinds, tiny: bool, comfyui_dir: Path, python: str) -> dict:
    """Everything the bench's stages load, under ``base/models`` and ``base/input``."""
    models = base / "models"
    folders = {name: models / name for name in ("diffusion_models", "loras", "vae")}
    for folder in [*folders.values(), base / "input"]:
        folder.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    config = TINY_DIT if tiny else {}
    dits = write_dit(folders["diffusion_models"], kinds, config, device)
    loras = write_loras(folders["loras"], config, TINY_LORA_RANK if tiny else LORA_RANK, device)
    vae = write_vae(folders["vae"], comfyui_dir, python)
    video = write_input_video(base / "input", *((17, 64, 32) if tiny else ()))
    return {"dit": {k: str(p) for k, p in dits.items()}, "loras": [str(p) for p in loras],
            "vae": str(vae), "video": str(video)}
