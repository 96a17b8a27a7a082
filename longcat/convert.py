"""Convert a LongCat-Video DiT into one safetensors file in the official layout, in bf16 / fp16 / fp32 / fp8,
or quantized in ComfyUI's format (fp8 or int8 block Linears with one scale per tensor or per row).

Sources: the official sharded fp32 ``dit/`` folder (or its index json), or a single file in the
official layout or Kijai's (bf16, or scaled fp8: its fp8 weights and per-row scales are copied as
they are for an fp8 output, dequantized for the others). Peak RAM stays around one tensor: the
output header is written first from the source headers (shapes and target dtypes only), then
tensors are read, cast (or quantized) and appended one at a time. The output is written to ``<dst>.partial``
and renamed when complete; on any error or interruption the partial file is removed and an
existing ``dst`` is left as it was. A ``dst`` that is (or would overwrite, or lies inside) a
source being read is refused before anything is written. Imports nothing from ComfyUI.
"""

import json
import logging
import math
import os
from pathlib import Path

import torch

from . import quant
from .scaled_fp8 import is_scale_key, weight_key
from .weights import SAFETENSORS_DTYPES, PlannedTensor, inspect_checkpoint, iter_planned, plan_tensors

logger = logging.getLogger(__name__)

DTYPE_NAMES = {
    "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
# ComfyUI-format quantized outputs: stored dtype of the block Linears, one scale per row or per tensor.
QUANT_NAMES = {"fp8": (torch.float8_e4m3fn, False), "fp8_rowwise": (torch.float8_e4m3fn, True),
               "int8": (torch.int8, False), "int8_rowwise": (torch.int8, True)}
_TAGS = {dtype: tag for tag, dtype in SAFETENSORS_DTYPES.items()}


def plan_output(infos: dict, dtype: torch.dtype, quantize: str | None = None) -> tuple[list, dict]:
    """``(plan, {layer: ComfyUI quantization conf})`` of the file ``convert`` writes.

    quantize None: every tensor in ``dtype`` (``weights.plan_tensors``). Else one of QUANT_NAMES:
    the block Linears (``quant.QUANTIZED_LINEARS``) quantized, each followed by its
    ``weight_scale`` (``[]`` per tensor, ``[out, 1]`` per row), everything else in ``dtype``
    (``quant.KEPT_BF16`` says why). A scaled source (Kijai's fp8, a ComfyUI fp8 / int8 file) is
    dequantized exactly first; one whose stored dtype is the target's keeps its values and row
    scales for a per-row output (no second rounding).
    """
    if quantize is None:
        return plan_tensors(infos, dtype), {}
    if quantize not in QUANT_NAMES:
        raise ValueError(f"quantize must be one of {list(QUANT_NAMES)}, got {quantize!r}")
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"with quantize, dtype (of the layers kept unquantized) must be bf16 / fp16 / fp32, got {dtype}")
    plan_tensors(infos, torch.float32)  # refuses sources it cannot dequantize (nvfp4)
    stored, per_row = QUANT_NAMES[quantize]
    scales = {weight_key(k): v for k, v in infos.items() if is_scale_key(k)}
    plan, layers = [], {}
    for key, source in sorted(infos.items(), key=lambda item: (str(item[1].file), item[0])):
        if is_scale_key(key):
            continue
        scale = scales.get(key)
        if not quant.is_quantized_linear(key):
            plan.append(PlannedTensor(key, source, dtype, scale))
            continue
        layer = key[:-len(".weight")]
        layers[layer] = {"format": quant.format_of(stored)}
        scale_shape = (source.shape[0], 1) if per_row else ()
        if per_row and scale is not None and source.dtype == stored:
            plan += [PlannedTensor(key, source, stored),
                     PlannedTensor(f"{layer}.weight_scale", scale, torch.float32, out_shape=scale_shape)]
        else:
            plan += [PlannedTensor(key, source, stored, scale, quantize="row" if per_row else "tensor"),
                     PlannedTensor(f"{layer}.weight_scale", None, torch.float32, scale_of=key,
                                   out_shape=scale_shape)]
    return plan, layers


def plan_header(plan: list, quant_layers: dict | None = None) -> dict:
    """Safetensors header of the planned tensors, in plan order (with ComfyUI's
    ``_quantization_metadata`` for ``{layer: conf}``)."""
    metadata = {"format": "pt", "source": "LongCat-Video dit"}
    if quant_layers:
        metadata[quant.METADATA_KEY] = quant.metadata_entry(quant_layers)
    header, offset = {"__metadata__": metadata}, 0
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


def convert(src, dst, dtype: torch.dtype = torch.bfloat16, overwrite: bool = False,
            quantize: str | None = None, progress=None) -> Path:
    """Write ``dst`` (one safetensors file, official keys) from ``src`` (``dit/`` folder, index json
    or single file, official or Kijai layout), casting to ``dtype`` (fp8: Linear weights only, the
    rest bf16; a scaled fp8 source keeps its fp8 weights and per-row ``scale_weight``).

    quantize: one of QUANT_NAMES for a ComfyUI-format quantized file (see ``plan_output``);
    ``dtype`` is then that of the layers kept unquantized.

    progress: optional ``progress(tensors_done, tensors_total, bytes_done, bytes_total)``, called
    once before the first tensor and after each tensor written (bytes of the output).

    Raises ValueError for a bad source (see ``weights.load_state_dict``), an unsupported dtype, or
    a bad ``dst`` (a folder, not .safetensors, no such folder, the source or inside a source
    folder, or an existing file without ``overwrite``), before anything is written.
    """
    if dtype not in DTYPE_NAMES.values():
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {dtype}")
    dst = Path(dst)
    check_output_path(dst)
    try:
        infos, _ = inspect_checkpoint(src)
    except ValueError as err:
        raise ValueError(f"source {src}: {err}; give the official dit/ folder (or its index json) "
                         "or one LongCat-Video DiT file") from None
    check_destination(src, infos, dst)
    if dst.exists() and not overwrite:
        raise ValueError(f"output {dst} exists; add --overwrite (overwrite=True) to replace it")
    plan, quant_layers = plan_output(infos, dtype, quantize)
    if quant_layers:
        _log_quantized(quant_layers, plan, dtype)
    partial = partial_path(dst)
    try:
        with open(partial, "wb") as out:
            out.write(header_bytes(plan_header(plan, quant_layers)))
            _write_tensors(out, plan, progress)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("wrote %d tensors (%s) to %s", len(plan), quantize or dtype, dst)
    return dst


def _log_quantized(layers: dict, plan: list, dtype: torch.dtype) -> None:
    """Say which layers are quantized and which stay in ``dtype``, and why."""
    formats = sorted({conf["format"] for conf in layers.values()})
    kept = sum(math.prod(e.shape) for e in plan if e.dtype == dtype)
    logger.info("quantized %d block Linears (%s) to %s; kept in %s (%.2f B values):", len(layers),
                ", ".join(quant.QUANTIZED_LINEARS), "/".join(formats), dtype, kept / 1e9)
    for reason in quant.KEPT_BF16:
        logger.info("  - %s", reason)


def partial_path(dst: Path) -> Path:
    """Where ``dst`` is written until it is complete."""
    return dst.with_name(dst.name + ".partial")


def check_output_path(dst: Path) -> None:
    """The checks on ``dst`` alone: a file name ending in .safetensors, in an existing folder.
    Raises ValueError naming ``dst`` and what to do."""
    if dst.is_dir():
        raise ValueError(f"output {dst} is a folder; give a file name inside it, e.g. "
                         f"{dst / 'longcat_video_dit_bf16.safetensors'}")
    if dst.suffix != ".safetensors":
        raise ValueError(f"output {dst} must end with .safetensors")
    if not dst.parent.is_dir():
        raise ValueError(f"output folder {dst.parent} does not exist; create it first")


def source_files(src, infos: dict) -> set:
    """Every file ``convert`` reads for ``src``: the tensors' files and an index json."""
    files = set()
    for info in infos.values():
        files.update(part.file for part in getattr(info, "parts", (info,)))
    src = Path(src)
    if src.is_file():
        files.add(src)
    elif src.is_dir():
        files.update(src.glob("*.safetensors.index.json"))
    return {Path(f) for f in files}


def check_destination(src, infos: dict, dst: Path) -> None:
    """Refuse a ``dst`` that would replace or grow a source: the same file as one being read (by
    inode, so through symlinks and hard links too), or a path inside a source folder (``dit/``,
    or the folder of an index json). Raises ValueError naming the file."""
    written = [p for p in (dst, partial_path(dst)) if p.exists()]
    for path in sorted(source_files(src, infos)):
        for target in written:
            if os.path.samefile(target, path):
                raise ValueError(f"output {target} is the source file {path} (same file on disk); "
                                 "write the output to another file name")
    src = Path(src)
    folders = {src} if src.is_dir() else {src.parent} if src.name.endswith(".index.json") else set()
    out_folder = Path(os.path.realpath(dst.parent))
    for folder in folders:
        if out_folder.is_relative_to(os.path.realpath(folder)):
            raise ValueError(f"output {dst} is inside the source folder {folder}; write it to "
                             "another folder (e.g. ComfyUI/models/diffusion_models/)")


def _write_tensors(out, plan: list, progress=None) -> None:
    """Append tensors in ``plan`` order, one in memory at a time."""
    total_bytes = sum(math.prod(e.shape) * e.dtype.itemsize for e in plan)
    done_bytes = 0
    if progress:
        progress(0, len(plan), 0, total_bytes)
    entries, done = iter(plan), 0
    for key, tensor in iter_planned(plan):  # not enumerate(): its reused tuple would keep the tensor alive
        entry, done = next(entries), done + 1
        if key != entry.key or tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise RuntimeError(f"{key}: read {tensor.dtype} {tuple(tensor.shape)}, planned "
                               f"{entry.dtype} {entry.shape}")  # a header/data mismatch would corrupt dst
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data
        out.write(data)
        done_bytes += data.nbytes
        del tensor, data  # free before reading the next one: peak RAM ~ one tensor
        if progress:
            progress(done, len(plan), done_bytes, total_bytes)
