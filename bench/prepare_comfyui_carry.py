"""Put a ComfyUI tree and the wheels it needs into ``.comfyui/`` and ``.whl/`` for the GPU machine.

The GPU machine has torch, torchaudio, transformers, scipy, aiohttp, requests and the like, but no
network; ``bench/bench_comfyui_vram.py`` runs a real ComfyUI server there from ``.comfyui/`` with
the missing packages installed from ``.whl/``. Both travel with the repository under a 64 MiB
limit, so this trims what a headless bench server never reads:

* the tree without ``.git``, CI, tests, blueprints and the Qwen tokenizers (~17 MB for 0.33.0);
* the frontend, templates and docs packages are not carried: the server gets an empty
  ``--front-end-root``;
* ComfyUI 0.33 imports comfy-kitchen at start (attention, fp8 stochastic rounding of LoRA
  patches); its wheel (58 MB) is carried without the compiled CUDA/HIP extensions (kitchen then
  registers its Triton and eager backends; it marks the CUDA one unavailable), which our DiT
  does not use: fp8 weights are cast by ``comfy.ops`` and the attention is ours.

Usage (here, with network): python bench/prepare_comfyui_carry.py <ComfyUI tree>
Prints the sizes and the ``carry`` list; fails if they pass the limit.
"""

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
# Packages ComfyUI imports at start that the GPU machine lacks (its image: bench/README.md).
COMMON = ["av==18.1.0", "torchsde==0.2.6", "trampoline==0.1.2", "alembic==1.20.1", "Mako==1.4.3",
          "SQLAlchemy==2.1.9", "pydantic==2.14.4", "pydantic_core==2.50.5", "pydantic-settings==2.16.3",
          "python-dotenv==1.2.4", "typing-inspection==0.4.5", "annotated-types==0.8.0",
          "typing_extensions==4.16.0"]
BY_VERSION = {
    "0.3": ["spandrel==0.4.2"],
    "0.33": ["comfy-kitchen==0.2.31", "comfy-aimdo==0.4.13", "simpleeval==1.0.8", "blake3==1.0.11"],
}
DROP_DIRS = {".git", ".github", ".ci", "tests", "tests-unit", "blueprints", "qwen25_tokenizer",
             "qwen35_tokenizer", "__pycache__", "script_examples"}
SLIM = {"comfy_kitchen": ("backends/cuda/_C.", "backends/hip/_C.")}


def comfy_version(tree: Path) -> str:
    return re.search(r'"([^"]+)"', (tree / "comfyui_version.py").read_text()).group(1)


def copy_tree(tree: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tree, dest, ignore=lambda d, names: [n for n in names if n in DROP_DIRS])


def download(wheels: list, dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest),
                    *wheels], check=True)


def slim(wheel: Path, drop: tuple) -> None:
    """Rewrite ``wheel`` without the members whose path contains one of ``drop`` (and their
    RECORD lines)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            if any(part in item.filename for part in drop):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not any(part in line for part in drop)).encode()
            out.writestr(item, data)
    tmp.replace(wheel)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui", type=Path, help="ComfyUI tree (0.3.64 or 0.33.x)")
    args = parser.parse_args()
    version = comfy_version(args.comfyui)
    family = "0.33" if version.startswith("0.33") else "0.3"
    wheels_dir, tree_dir = ROOT / ".whl", ROOT / ".comfyui"
    if wheels_dir.exists():
        shutil.rmtree(wheels_dir)
    copy_tree(args.comfyui, tree_dir)
    download(COMMON + BY_VERSION[family], wheels_dir)
    for wheel in wheels_dir.glob("*.whl"):
        for name, drop in SLIM.items():
            if wheel.name.startswith(name):
                slim(wheel, drop)
    tracked = sum((ROOT / f).stat().st_size for f in subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    total = tracked + size(wheels_dir) + size(tree_dir)
    print(f"ComfyUI {version}: .comfyui {size(tree_dir) / 2**20:.1f} MiB, .whl {size(wheels_dir) / 2**20:.1f} MiB, "
          f"repository {tracked / 2**20:.1f} MiB: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f}")
    print('carry: [".whl", ".comfyui"]')
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
