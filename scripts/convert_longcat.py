"""Convert a LongCat-Video DiT (official dit/ shards, or Kijai's bf16 / scaled fp8 file) into one file.

    python scripts/convert_longcat.py weights/LongCat-Video/dit \
        ComfyUI/models/diffusion_models/longcat_video_dit_bf16.safetensors --dtype bf16
    python scripts/convert_longcat.py LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ.safetensors \
        ComfyUI/models/diffusion_models/longcat_video_dit_fp8_scaled.safetensors --dtype fp8_e4m3fn
    python scripts/convert_longcat.py weights/LongCat-Video/dit \
        ComfyUI/models/diffusion_models/longcat_video_dit_int8.safetensors --quantize int8_rowwise

The output has the official key names. Peak RAM is about one tensor, not the model; the source is
validated first (keys, shapes). The loader also reads Kijai's files directly: converting them
is optional.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack


def main(argv=None) -> int:
    import_pack()  # registers the pack as ``longcat_pack``
    from longcat_pack.longcat.convert import DTYPE_NAMES, QUANT_NAMES, convert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="official dit/ folder, its *.safetensors.index.json, or one .safetensors "
                                    "file (official layout, or Kijai's bf16 / scaled fp8 file)")
    parser.add_argument("dst", help="output .safetensors file (e.g. in ComfyUI/models/diffusion_models/)")
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if Path(args.dst).exists() and not args.overwrite:
        print(f"error: {args.dst} exists; add --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        out = convert(args.src, args.dst, DTYPE_NAMES[args.dtype], overwrite=args.overwrite,
                      quantize=args.quantize)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
