"""Convert a LongCat-Video DiT into one safetensors file in the official layout, in bf16 / fp16 / fp32 / fp8.

Sources: the official sharded fp32 ``dit/`` folder (or its index json), or a single file in the
official layout or Kijai's (bf16, or scaled fp8: its fp8 weights and per-row scales are copied as
they are for an fp8 output, dequantized for the others). Peak RAM stays around one tensor: the
output header is written first from the source headers (shapes and target dtypes only), then
tensors are read, cast and appended one at a time. The output is written to ``<dst>.partial``
and renamed when complete. Imports nothing from ComfyUI.
"""

import json
import logging
import math
import os
from pathlib import Path

import torch

from .weights import SAFETENSORS_DTYPES, inspect_checkpoint, iter_planned, plan_tensors

logger = logging.getLogger(__name__)

DTYPE_NAMES = {
    "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
_TAGS = {dtype: tag for tag, dtype in SAFETENSORS_DTYPES.items()}


def plan_header(plan: list) -> dict:
    """Safetensors header of the planned tensors, in plan order."""
    header, offset = {"__metadata__": {"format": "pt", "source": "LongCat-Video dit"}}, 0
    for entry in plan:
        size = math.prod(entry.shape) * entry.dtype.itemsize
        header[entry.key] = {"dtype": _TAGS[entry.dtype], "shape": list(entry.shape),
                             "data_offsets": [offset, offset + size]}
        offset += size
    return header


def header_bytes(header: dict) -> bytes:
    """The safetensors file prefix for ``header``: its length (8 bytes, little-endian), then the JSON."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data start, as the safetensors writer does
    return len(raw).to_bytes(8, "little") + raw


def convert(src, dst, dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> Path:
    """Write ``dst`` (one safetensors file, official keys) from ``src`` (``dit/`` folder, index json
    or single file, official or Kijai layout), casting to ``dtype`` (fp8: Linear weights only, the
    rest bf16; a scaled fp8 source keeps its fp8 weights and per-row ``scale_weight``).

    Raises ValueError for a bad source (see ``weights.load_state_dict``), an unsupported dtype, a
    missing output folder, or an existing ``dst`` without ``overwrite``.
    """
    if dtype not in DTYPE_NAMES.values():
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {dtype}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ValueError(f"output {dst} exists; pass overwrite=True to replace it")
    if dst.suffix != ".safetensors":
        raise ValueError(f"output must end with .safetensors, got {dst.name}")
    if not dst.parent.is_dir():
        raise ValueError(f"output folder {dst.parent} does not exist; create it first")
    infos, _ = inspect_checkpoint(src)
    plan = plan_tensors(infos, dtype)
    partial = dst.with_name(dst.name + ".partial")
    try:
        with open(partial, "wb") as out:
            out.write(header_bytes(plan_header(plan)))
            _write_tensors(out, plan)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("wrote %d tensors (%s) to %s", len(plan), dtype, dst)
    return dst


def _write_tensors(out, plan: list) -> None:
    """Append tensors in ``plan`` order, one in memory at a time."""
    entries = iter(plan)
    for key, tensor in iter_planned(plan):
        entry = next(entries)
        if key != entry.key or tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise RuntimeError(f"{key}: read {tensor.dtype} {tuple(tensor.shape)}, planned "
                               f"{entry.dtype} {entry.shape}")  # a header/data mismatch would corrupt dst
        out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        del tensor  # free before reading the next one: peak RAM ~ one tensor
