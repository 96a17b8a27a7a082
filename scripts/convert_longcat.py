"""Convert a LongCat-Video DiT (official dit/ shards, or Kijai's bf16 / scaled fp8 file) into one file.

    python scripts/convert_longcat.py weights/LongCat-Video/dit \
        ComfyUI/models/diffusion_models/longcat_video_dit_bf16.safetensors --dtype bf16
    python scripts/convert_longcat.py LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ.safetensors \
        ComfyUI/models/diffusion_models/longcat_video_dit_fp8_scaled.safetensors --dtype fp8_e4m3fn
    python scripts/convert_longcat.py weights/LongCat-Video/dit \
        ComfyUI/models/diffusion_models/longcat_video_dit_int8.safetensors --quantize int8_rowwise

The output has the official key names. Peak RAM is about one tensor, not the model; the source is
validated first (keys, shapes). The loader also reads Kijai's files directly: converting them
is optional. On a terminal a progress bar shows tensors, bytes, rate and ETA. A bad source or
output is a one-line error before anything is written; the output is written under
``<dst>.partial`` and renamed at the end, so Ctrl-C (exit code 130) or an error leaves no partial
file and an existing ``dst`` untouched.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


class ProgressBar:
    """One self-overwriting line on a terminal: tensors, GiB, percent, bar, rate and ETA."""

    def __init__(self, stream, min_interval: float = 0.1, width: int = 20):
        self.stream, self.min_interval, self.width = stream, min_interval, width
        self.start = self.last = None

    def __call__(self, tensors: int, total_tensors: int, done: int, total: int) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        final = tensors == total_tensors
        if not final and self.last is not None and now - self.last < self.min_interval:
            return
        self.last = now
        self.stream.write("\r" + self.line(tensors, total_tensors, done, total, now - self.start))
        if final:
            self.stream.write("\n")
        self.stream.flush()

    def line(self, tensors: int, total_tensors: int, done: int, total: int, elapsed: float) -> str:
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        eta_text = "--:--" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        return (f"{tensors}/{total_tensors} tensors  {done / 2**30:.2f}/{total / 2**30:.2f} GiB  "
                f"[{'#' * filled}{'.' * (self.width - filled)}] {frac:4.0%}  "
                f"{rate / 2**20:.0f} MiB/s  ETA {eta_text}")


def main(argv=None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:  # convert() has removed its partial file on the way out
        print(("\n" if sys.stderr.isatty() else "") + "interrupted: nothing written, the partial "
              "output was removed", file=sys.stderr)
        return INTERRUPTED


def _run(argv) -> int:
    import_pack()  # registers the pack as ``longcat_pack``
    from longcat_pack.longcat.convert import DTYPE_NAMES, QUANT_NAMES, convert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="official dit/ folder, its *.safetensors.index.json, or one .safetensors "
                                    "file (official layout, or Kijai's bf16 / scaled fp8 file)")
    parser.add_argument("dst", help="output .safetensors file (e.g. in ComfyUI/models/diffusion_models/); "
                                    "never the source or a path inside the source folder")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16",
                        help="output dtype (default: %(default)s). fp8 applies to Linear weights, the rest "
                             "is stored in bf16; a scaled fp8 source keeps its fp8 weights and scales for an "
                             "fp8 dtype and is dequantized for the others")
    parser.add_argument("--quantize", choices=sorted(QUANT_NAMES),
                        help="write ComfyUI's quantized format instead: the block Linears in fp8 (e4m3fn) or "
                             "int8 with one scale per tensor, or per output row (_rowwise: more precise; a "
                             "Kijai scaled fp8 source converts to fp8_rowwise without loss); norms, embedders, "
                             "modulation and the final layer stay in --dtype (bf16)")
    parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists (default: refuse)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # which layers --quantize kept
    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        out = convert(args.src, args.dst, DTYPE_NAMES[args.dtype], overwrite=args.overwrite,
                      quantize=args.quantize, progress=progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, no permission: the partial file is already removed
        print(f"error: {err.filename or args.dst}: {err.strerror or err}; nothing was written (free "
              "space, check permissions or pick another folder)", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
