"""Convert the official sharded fp32 ``dit/`` checkpoint into one bf16 / fp16 / fp8 safetensors file.

Peak RAM stays around one tensor: the output header is written first from the source headers
(shapes and target dtypes only), then tensors are read, cast and appended one at a time. The
output is written to ``<dst>.partial`` and renamed when complete. Imports nothing from ComfyUI.
"""

import json
import logging
import math
import os
from itertools import groupby
from pathlib import Path

import torch
from safetensors import safe_open

from .weights import SAFETENSORS_DTYPES, cast_tensor, inspect_checkpoint, storage_dtype

logger = logging.getLogger(__name__)

DTYPE_NAMES = {
    "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
_TAGS = {dtype: tag for tag, dtype in SAFETENSORS_DTYPES.items()}


def plan_layout(infos: dict, dtype: torch.dtype) -> tuple[list, dict]:
    """Output order ``[(key, TensorInfo, target dtype)]`` (grouped by source shard) and the header dict."""
    order = sorted(infos.items(), key=lambda item: (str(item[1].file), item[0]))
    plan, header, offset = [], {"__metadata__": {"format": "pt", "source": "LongCat-Video dit"}}, 0
    for key, info in order:
        target = storage_dtype(key, info.shape, dtype, info.dtype)
        size = math.prod(info.shape) * target.itemsize
        header[key] = {"dtype": _TAGS[target], "shape": list(info.shape), "data_offsets": [offset, offset + size]}
        plan.append((key, info, target))
        offset += size
    return plan, header


def header_bytes(header: dict) -> bytes:
    """The safetensors file prefix for ``header``: its length (8 bytes, little-endian), then the JSON."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data start, as the safetensors writer does
    return len(raw).to_bytes(8, "little") + raw


def convert(src, dst, dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> Path:
    """Write ``dst`` (one safetensors file, official keys) from ``src`` (``dit/`` folder, index json
    or single file), casting to ``dtype`` (fp8: Linear weights only; the rest bf16).

    Raises ValueError for a bad source (see ``weights.load_state_dict``), an unsupported dtype, a
    missing output folder, or an existing ``dst`` without ``overwrite``.
    """
    if dtype not in DTYPE_NAMES.values():
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {dtype}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ValueError(f"output {dst} exists; pass overwrite=True (--overwrite) to replace it")
    if dst.suffix != ".safetensors":
        raise ValueError(f"output must end with .safetensors, got {dst.name}")
    if not dst.parent.is_dir():
        raise ValueError(f"output folder {dst.parent} does not exist; create it first")
    infos, _ = inspect_checkpoint(src)
    plan, header = plan_layout(infos, dtype)
    partial = dst.with_name(dst.name + ".partial")
    try:
        with open(partial, "wb") as out:
            out.write(header_bytes(header))
            _write_tensors(out, plan)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("wrote %d tensors (%s) to %s", len(plan), dtype, dst)
    return dst


def _write_tensors(out, plan: list) -> None:
    """Append tensors in ``plan`` order; each shard is opened once, one tensor in memory at a time."""
    for file, group in groupby(plan, key=lambda item: item[1].file):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for _, info, target in group:
                tensor = cast_tensor(handle.get_tensor(info.name), target).contiguous()
                out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
                del tensor  # free before reading the next one: peak RAM ~ one tensor
