"""CPU demo: the real LongCat sampler + refine + BSA code path on a tiny random model.

Builds a tiny random LongCatVideoDiT in-process (no weights needed), samples a text-to-video
clip with the official 50-step-style schedule (shortened) and CFG-Zero*, then refines it 2× in
time and space with block-sparse attention on (``BSASettings`` in ``transformer_options``),
using a stand-in VAE (8×8 average pooling + 4-frame grouping) for the frame ↔ latent
bookkeeping. Writes contact-sheet PNG previews and prints a summary with the BSA report.

    python scripts/demo.py [--out out/demo] [--backend auto|torch|triton] [--device cpu]

The output is noise-like (random weights); the point is that every stage runs end to end.
"""

import argparse
import struct
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack

import_pack()
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.dit import LongCatVideoDiT
from longcat_pack.longcat.options import BSA_LOG_KEY, BSA_OPTIONS_KEY
from longcat_pack.longcat.pipelines import TextCondition, make_dit_fn, text_to_video
from longcat_pack.longcat.refine import refine
from longcat_pack.longcat.schedules import normal_sigmas
from longcat_pack.longcat.standin_vae import standin_decode, standin_encode

CAPTION = 32      # tiny stand-in for umT5's 4096 channels
TEXT_TOKENS = 16


class BSAReportLog:
    """Collects the per-call BSA reports the DiT records (``transformer_options[BSA_LOG_KEY]``)."""

    def __init__(self):
        self.reports = []

    def record(self, block_index, report):
        self.reports.append((block_index, report))

    def summary(self) -> str:
        if not self.reports:
            return "BSA: no block-sparse calls"
        reps = [r for _, r in self.reports]
        backends = sorted({f"{r.backend} ({r.reason})" for r in reps})
        density = sum(r.density for r in reps) / len(reps)
        blocks = torch.cat([r.blocks_per_query_chunk.float().flatten() for r in reps]).mean()
        return (f"BSA: {len(reps)} calls, backend {', '.join(backends)}; mean density {density:.3f}, "
                f"mean key blocks per query chunk {blocks:.2f}, padded grids {sum(r.padded for r in reps)}")


def tiny_model(seed: int, device, dtype) -> LongCatVideoDiT:
    torch.manual_seed(seed)
    model = LongCatVideoDiT(hidden_size=128, depth=2, num_heads=2, caption_channels=CAPTION,
                            adaln_tembed_dim=32, frequency_embedding_size=32, device=device)
    return model.to(dtype).eval()  # head_dim 64: a size the Triton BSA kernel takes


def random_text(seed: int, valid: int, device) -> TextCondition:
    """A stand-in for an encoded prompt: random states, ``valid`` real tokens then padding."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TEXT_TOKENS, CAPTION, generator=gen).to(device)
    mask = (torch.arange(TEXT_TOKENS) < valid).long()[None].to(device)
    return TextCondition(context, mask)


def write_png(path: Path, rgb: torch.Tensor) -> None:
    """Write ``[H, W, 3]`` uint8 as an 8-bit RGB PNG (zlib + struct, no imaging dependency)."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(row) for row in rgb.contiguous().numpy().reshape(height, -1))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def contact_sheet(frames: torch.Tensor, columns: int = 9) -> torch.Tensor:
    """``[F, H, W, 3]`` in [0, 1] → one uint8 image with the frames in rows of ``columns``."""
    count, height, width, _ = frames.shape
    rows = -(-count // columns)
    sheet = torch.zeros(rows * height, columns * width, 3)
    for i, frame in enumerate(frames.float().cpu()):
        r, c = divmod(i, columns)
        sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = frame
    return (sheet.clamp(0, 1) * 255).round().to(torch.uint8)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the preview PNGs")
    parser.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto", help="BSA backend")
    parser.add_argument("--device", default="cpu", help="torch device for the model and latents")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model dtype; auto: bfloat16 on CUDA (the Triton kernel needs 16-bit), else float32")
    parser.add_argument("--steps", type=int, default=8, help="stage-1 sampling steps (official: 50)")
    parser.add_argument("--frames", type=int, default=9, help="stage-1 frames (4k+1)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    model = tiny_model(args.seed, device, getattr(torch, dtype_name))
    positive, negative = random_text(1, 10, device), random_text(2, 1, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    start = time.perf_counter()
    latent = text_to_video(make_dit_fn(model), positive, negative, height=64, width=64, num_frames=args.frames,
                           sigmas=normal_sigmas(args.steps), guidance_scale=4.0, generator=generator)
    stage1 = standin_decode(latent.cpu())
    t_stage1 = time.perf_counter() - start

    log = BSAReportLog()
    options = {BSA_OPTIONS_KEY: BSASettings(sparsity=0.5, backend=args.backend), BSA_LOG_KEY: log}
    start = time.perf_counter()
    result = refine(make_dit_fn(model, options), lambda f: standin_encode(f).to(device), standin_decode,
                    stage1, random_text(3, 1, device), height=128, width=128, generator=generator)
    t_refine = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    write_png(args.out / "stage1.png", contact_sheet(stage1))
    write_png(args.out / "refined.png", contact_sheet(result.frames, columns=9))
    print(f"stage 1: text-to-video latent {tuple(latent.shape)} → {stage1.shape[0]} frames "
          f"{stage1.shape[1]}x{stage1.shape[2]}, {args.steps} steps with CFG-Zero*, {t_stage1:.2f} s")
    print(f"refine: {result.plan.new_frames} frames {result.frames.shape[1]}x{result.frames.shape[2]}, "
          f"latent {tuple(result.latent.shape)}, 5 steps from t_thresh 0.5, {t_refine:.2f} s")
    print(log.summary())
    print(f"previews: {args.out / 'stage1.png'}, {args.out / 'refined.png'}")
    return {"stage1": stage1, "refined": result.frames, "bsa_reports": log.reports}


if __name__ == "__main__":
    main()
