"""Record tests/data/object_info.json from a real ComfyUI server (run when nodes change).

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python scripts/record_object_info.py

Starts ComfyUI on the CPU with this pack and no model files (so file lists are empty and the
snapshot does not depend on the machine), without the test-only nodes, and writes the
``/object_info`` entries of our nodes plus the stock nodes our workflows and tests use.
The ComfyUI commit is stored under ``"_meta"``.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))
from comfy_server import ComfyServer, our_node_info  # noqa: E402

STOCK_NODES = (
    "CLIPLoader", "CLIPTextEncode", "VAELoader", "VAEDecode", "VAEEncode", "VAEDecodeTiled",
    "LoadImage", "SaveImage", "PreviewImage", "SaveAnimatedWEBP", "CreateVideo", "SaveVideo",
    "LoadVideo", "GetVideoComponents", "EmptyHunyuanLatentVideo", "KSampler", "KSamplerAdvanced",
    "SamplerCustom", "KSamplerSelect", "LoraLoaderModelOnly", "UNETLoader", "ModelSamplingSD3",
    "TorchCompileModel", "ImageScale", "ImageFromBatch", "ConditioningCombine",
    "ConditioningZeroOut", "PreviewAny", "PrimitiveString", "PrimitiveInt",
)
STOCK_NODES += ("LoadAudio", "AudioEncoderLoader", "ImageBatch")  # the Avatar workflows
OUT = ROOT / "tests" / "data" / "object_info.json"


def main() -> None:
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        sys.exit("set COMFYUI_DIR to a ComfyUI tree")
    env = {k: v for k, v in os.environ.items() if k != "LONGCAT_TEST_NODES"}
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(comfyui_dir, base)
        server.env = env
        server.start()
        try:
            info = server.get("/object_info")
        finally:
            server.stop()
    missing = [name for name in STOCK_NODES if name not in info]
    snapshot = {name: info[name] for name in STOCK_NODES if name in info}
    snapshot.update(our_node_info(info))
    commit = subprocess.run(["git", "-C", comfyui_dir, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    snapshot["_meta"] = {"comfyui_commit": commit, "missing_stock_nodes": missing}
    OUT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(snapshot) - 1} nodes, ComfyUI {commit}); missing: {missing}")


if __name__ == "__main__":
    main()
