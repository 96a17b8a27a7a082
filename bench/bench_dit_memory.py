"""How much GPU memory and time does one full-size LongCat DiT forward take at the official sizes?

Builds the published DiT (13.58 B parameters, bf16, random weights: only sizes matter here) on
the GPU from the model package and times one forward (``torch.cuda.Event`` around a synchronised
call, after one warm-up forward) with its peak VRAM (``torch.cuda.max_memory_allocated``):

* 480p stage 1: 480×832, 93 frames (token grid 24×30×52), batch 2 (CFG), dense attention;
* 720p refine: 704×1280, 2× frames (token grid 48×44×80), batch 1, BSA at the published setting.

These are the numbers behind the workflows' VRAM notes (weights + activations of the DiT alone;
text encoder and VAE are offloaded by ComfyUI while the DiT samples).

Usage (CUDA): python bench/bench_dit_memory.py --out bench/results/<name>.json [--cases 480p,refine]
``--tiny`` runs a tiny config on the CPU as a smoke test of the script itself.
"""

import argparse
import json
import platform
from pathlib import Path

import torch
from _common import random_dit
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.options import BSA_OPTIONS_KEY

TINY = dict(hidden_size=64, depth=2, num_heads=2, caption_channels=32, adaln_tembed_dim=32,
            frequency_embedding_size=16)
# name: (batch, latent T, latent H, latent W, BSA on)
CASES = {"480p": (2, 24, 60, 104, False), "refine": (1, 48, 88, 160, True)}
TINY_CASES = {"480p": (2, 3, 6, 10, False), "refine": (1, 4, 8, 8, True)}


def forward_stats(model, case, device, dtype, caption_channels):
    """(ms, peak GB) of one forward for ``case``; BSA settings when the case asks for them."""
    b, t, h, w, bsa = case
    x = torch.randn(b, 16, t, h, w, device=device, dtype=dtype)
    ctx = torch.randn(b, 512, caption_channels, device=device, dtype=dtype)
    mask = torch.ones(b, 512, device=device)
    opts = {BSA_OPTIONS_KEY: BSASettings()} if bsa else {}
    timestep = torch.full((b,), 500.0, device=device)

    def run():
        with torch.no_grad():
            return model(x, timestep, ctx, mask, transformer_options=dict(opts))

    run()  # warm-up: Triton compilation, cuDNN plans
    if device.type != "cuda":
        return float("nan"), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), torch.cuda.max_memory_allocated() / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON output path")
    parser.add_argument("--cases", default="480p,refine")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = random_dit(TINY if args.tiny else None, device, dtype)
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    caption = model.y_embedder.y_proj[0].in_features
    cases = TINY_CASES if args.tiny else CASES
    rows = []
    for name in args.cases.split(","):
        ms, peak = forward_stats(model, cases[name], device, dtype, caption)
        b, t, h, w, bsa = cases[name]
        rows.append(dict(case=name, batch=b, latent=[t, h, w], tokens=t * h * w // 4, bsa=bsa,
                         forward_ms=ms, peak_gb=peak))
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{card} · torch {torch.__version__} · DiT weights {weights_gb:.2f} GB ({dtype})")
    print(f"{'case':8} {'batch':>5} {'tokens':>8} {'BSA':>5} {'forward ms':>11} {'peak GB':>8}")
    for r in rows:
        print(f"{r['case']:8} {r['batch']:5d} {r['tokens']:8d} {str(r['bsa']):>5} "
              f"{r['forward_ms']:11.1f} {r['peak_gb']:8.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(card=card, torch=torch.__version__, dtype=str(dtype),
                                            weights_gb=weights_gb, rows=rows), indent=1))


if __name__ == "__main__":
    main()
