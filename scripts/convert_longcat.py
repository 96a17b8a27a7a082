"""Convert the official LongCat-Video ``dit/`` checkpoint (sharded fp32) into one file for ComfyUI.

    python scripts/convert_longcat.py weights/LongCat-Video/dit \
        ComfyUI/models/diffusion_models/longcat_video_dit_bf16.safetensors --dtype bf16

Peak RAM is about one tensor (< 0.2 GB); the output is validated on the way (keys, shapes).
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack


def main(argv=None) -> int:
    import_pack()  # registers the pack as ``longcat_pack``
    from longcat_pack.longcat.convert import DTYPE_NAMES, convert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="official dit/ folder, its *.safetensors.index.json, or one .safetensors file")
    parser.add_argument("dst", help="output .safetensors file (e.g. in ComfyUI/models/diffusion_models/)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16",
                        help="output dtype; fp8 applies to Linear weights, the rest is stored in bf16")
    parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if Path(args.dst).exists() and not args.overwrite:
        print(f"error: {args.dst} exists; add --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        out = convert(args.src, args.dst, DTYPE_NAMES[args.dtype], overwrite=args.overwrite)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
