"""What do quantized weights cost and save in one LongCat DiT step? bf16 against fp8 and int8
weights running through ComfyUI's own mixed-precision ops, at 480p with CFG and at the refine grid.

One random bf16 DiT (the published 13.58 B config; matrices N(0, 1/fan_in), vectors N(0, 0.3²)) is
built on the GPU; the quantized models are made from it there the way the converter writes a
file (``longcat.quant``: the block Linears quantized, the rest bf16 and shared) and load through
the loader's ops (``nodes.scaled_ops``) on ComfyUI's ``comfy`` package from ``--comfyui`` (a tree
with mixed-precision ops: 0.33). Variants:

* ``bf16``: the bf16 model (torch.nn Linears), the baseline;
* ``fp8``: float8_e4m3fn weights, one scale per tensor, each Linear dequantized to bf16 while it
  runs (the loader's default: ``quantized_matmul`` off);
* ``fp8_matmul``: the same weights, fp8 × fp8 matmul (``quantized_matmul`` on; ComfyUI quantizes
  the activations with scale 1.0, as for any fp8 file without input scales);
* ``int8_matmul``: int8 weights, one scale per row, ComfyUI's int8 linear (activations quantized
  per row by comfy-kitchen: with the pure-Python wheel its eager backend, ``torch._int_mm``);
* ``fp8_rowwise_matmul``: Kijai-style fp8 with one scale per row through our scaled ops with fp8
  matmul (activations quantized per token; what the loader does for Kijai's file with
  ``quantized_matmul`` on).

Cases (as ``bench_dit_step.py``): ``480p``: 480×832×93f, CFG batch 2, latent 24×60×104, dense
attention; ``refine``: 704×1280, 2× frames, latent 48×88×160, BSA 0.9375. ``--official <LongCat-Video
checkout>`` also times the official model's bf16 refine step on the same weights (built as in
``bench_dit_step.py``), for the issue's target "whole refine step ≤ 0.45× the official one".

Per case and variant: one warm-up forward, then one timed forward (CUDA events), the weights'
GiB, the forward's peak above what was resident before it, and the rel. L2 of the output against
bf16's. The weights are random, so the error is indicative only: trained weights have other
value distributions (outliers), and a sampled video accumulates error over its steps.

Usage (CUDA): python bench/bench_quant.py --comfyui <ComfyUI 0.33 tree> [--official <checkout>]
    [--out-dir bench/results] [--cases 480p,refine] [--variants bf16,fp8,fp8_matmul,int8_matmul]
writes ``quant_<card>_<date>.json``. ``--tiny`` runs a tiny config on the CPU (smoke test).
"""

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _common import random_dit
from longcat_pack.longcat import quant
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.build import load_weights, resolve_block_kernels
from longcat_pack.longcat.dit import LongCatVideoDiT
from longcat_pack.longcat.options import BSA_OPTIONS_KEY

# name: (batch, latent T, H, W, BSA)
CASES = {"480p": (2, 24, 60, 104, False), "refine": (1, 48, 88, 160, True)}
TINY_CASES = {"480p": (2, 3, 6, 10, False), "refine": (1, 4, 8, 8, True)}
TINY = dict(hidden_size=64, depth=2, num_heads=2, caption_channels=32, adaln_tembed_dim=32,
            frequency_embedding_size=16)
VARIANTS = ("bf16", "fp8", "fp8_matmul", "int8_matmul", "fp8_rowwise_matmul")
TEXT_TOKENS, REAL_TEXT_TOKENS = 512, 300


def import_comfy(root: Path, cpu: bool):
    """ComfyUI's ``comfy`` package from ``root`` (mixed-precision ops required)."""
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu  # before comfy.model_management probes the device
    import comfy.model_management
    import comfy.ops
    import comfy.quant_ops

    if not hasattr(comfy.ops, "mixed_precision_ops") or "int8_tensorwise" not in comfy.quant_ops.QUANT_ALGOS:
        sys.exit(f"{root}: this ComfyUI has no mixed-precision ops with int8; use ComfyUI 0.33 or newer")
    return comfy


def tensor_bytes(tensor) -> int:
    """Bytes a (possibly ComfyUI-quantized) tensor holds: its stored data and scales."""
    qdata = getattr(tensor, "_qdata", None)
    if qdata is None:
        return tensor.numel() * tensor.element_size()
    params = tensor._params
    scales = [getattr(params, f.name) for f in dataclasses.fields(params)]
    return qdata.numel() * qdata.element_size() + sum(s.numel() * s.element_size() for s in scales
                                                      if isinstance(s, torch.Tensor))


def weights_gib(model) -> float:
    return sum(tensor_bytes(t) for t in model.state_dict(keep_vars=True).values()
               if isinstance(t, torch.Tensor)) / 2**30


def quantized_state(bf16_model, dtype, per_row: bool, comfy_format: bool) -> dict:
    """The bf16 model's state with its block Linears quantized (the rest shared, not copied):
    ComfyUI's form (``weight_scale``, ``comfy_quant``) or ours (``scale_weight [out]``)."""
    state = {}
    for key, value in bf16_model.state_dict().items():
        if not quant.is_quantized_linear(key):
            state[key] = value
            continue
        layer = key[:-len(".weight")]
        state[key], scale = quant.quantize(value, dtype, per_row)
        if comfy_format:
            state[f"{layer}.weight_scale"] = scale
            state[f"{layer}.comfy_quant"] = quant.conf_tensor({"format": quant.format_of(dtype)})
        else:
            state[f"{layer}.scale_weight"] = scale.reshape(-1)
    return state


def build_quantized(variant, bf16_model, config, device, emulated):
    """The variant's DiT on ``device``, its weights made from ``bf16_model``, with the same block
    kernels as the bf16 model (what the loaders pick for the device)."""
    from longcat_pack.nodes.scaled_ops import mixed_precision_ops, scaled_fp8_ops

    kernels = resolve_block_kernels("auto", device, torch.bfloat16, config)

    if variant == "fp8_rowwise_matmul":
        model = LongCatVideoDiT(**config, device="meta", dtype=torch.bfloat16, operations=scaled_fp8_ops(True),
                                block_kernels=kernels)
        state = quantized_state(bf16_model, torch.float8_e4m3fn, per_row=True, comfy_format=False)
    else:
        dtype, per_row = (torch.int8, True) if variant == "int8_matmul" else (torch.float8_e4m3fn, False)
        ops = mixed_precision_ops(torch.bfloat16, full_precision_mm=variant == "fp8", disabled=emulated)
        # Not on the meta device: these ops move each loaded weight to the device they were built on.
        model = LongCatVideoDiT(**config, device=device, dtype=torch.bfloat16, operations=ops, block_kernels=kernels)
        state = quantized_state(bf16_model, dtype, per_row, comfy_format=True)
    return load_weights(model, state).eval()


def inputs(case, device, caption_channels):
    b, t, h, w, bsa = case
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, 16, t, h, w, device=device, dtype=torch.bfloat16, generator=gen)
    ctx = torch.randn(b, TEXT_TOKENS, caption_channels, device=device, dtype=torch.bfloat16, generator=gen)
    mask = (torch.arange(TEXT_TOKENS, device=device) < REAL_TEXT_TOKENS).long().expand(b, -1)
    timestep = torch.full((b,), 700.0, device=device)
    opts = {BSA_OPTIONS_KEY: BSASettings(sparsity=0.9375, chunk_3d_shape_q=(4, 4, 4),
                                         chunk_3d_shape_k=(4, 4, 4))} if bsa else {}
    return x, timestep, ctx, mask, opts


def timed(fn, device):
    """(output, seconds, peak GiB above what was allocated before) of one call after a warm-up."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start, float("nan")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize()
    return out, start.elapsed_time(end) / 1e3, (torch.cuda.max_memory_allocated() - before) / 2**30


def rel_l2(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run_model(model, case, device, caption_channels):
    x, timestep, ctx, mask, opts = inputs(case, device, caption_channels)

    def forward():
        with torch.no_grad():
            return model(x, timestep, ctx, mask, transformer_options=dict(opts))

    return timed(forward, device)


def official_refine(checkout, bf16_model, case, device):
    """(seconds, peak GiB above resident, output) of the official model's bf16 refine step."""
    from bench_dit_step import build_official, import_official

    official = build_official(import_official(checkout), bf16_model, bsa=True)
    x, timestep, ctx, mask, _ = inputs(case, device, 4096)

    def forward():
        with torch.no_grad():
            return official(x, timestep, ctx[:, None], mask)

    out, seconds, peak = timed(forward, device)
    return seconds, peak, out


def card_slug(card: str) -> str:
    for name in ("h200", "h100", "b200", "a100", "l40s", "4090", "5090"):
        if name in card.lower():
            return name
    return "".join(c for c in card.lower() if c.isalnum())[:16] or "cpu"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI tree with mixed-precision ops (0.33)")
    parser.add_argument("--official", type=Path, help="LongCat-Video checkout: also time its bf16 refine step")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--cases", default="480p,refine")
    parser.add_argument("--variants", default="bf16,fp8,fp8_matmul,int8_matmul,fp8_rowwise_matmul")
    parser.add_argument("--time-budget", type=float, default=280.0,
                        help="seconds: skip a (variant, case) that would not finish within it, estimated from "
                             "bf16's two forwards of that case (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test of the script)")
    args = parser.parse_args()
    started = time.perf_counter()
    variants = args.variants.split(",")
    if variants[0] != "bf16" or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: bf16 first, then any of {VARIANTS[1:]}")
    comfy = import_comfy(args.comfyui, cpu=args.tiny)
    device = torch.device("cpu" if args.tiny else "cuda")
    config = TINY if args.tiny else {}
    cases = {name: (TINY_CASES if args.tiny else CASES)[name] for name in args.cases.split(",")}
    mm = comfy.model_management
    # What ComfyUI's pick_operations decides for this device (the tiny CPU run forces every path).
    emulated = set() if args.tiny else {f for f, ok in (("float8_e4m3fn", mm.supports_fp8_compute(device)),
                                                         ("nvfp4", mm.supports_nvfp4_compute(device))) if not ok}
    bf16_model = random_dit(config, device, torch.bfloat16, vector_std=0.3)
    caption = bf16_model.y_embedder.y_proj[0].in_features
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    result = {"card": card, "torch": torch.__version__, "comfyui": str(args.comfyui),
              "emulated_formats": sorted(emulated), "note": "random weights: rel. L2 is indicative only",
              "rows": []}
    out_path = args.out_dir / f"quant_{card_slug(card)}_{datetime.date.today().isoformat()}.json"
    reference, base_seconds = {}, {}

    def record(row):
        result["rows"].append(row)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))  # after every row: partial runs survive
        print(json.dumps(row), flush=True)

    if args.official and "refine" in cases and not args.tiny:
        seconds, peak, out = official_refine(args.official, bf16_model, cases["refine"], device)
        result["official_refine_s"] = seconds
        record({"case": "refine", "variant": "official_bf16", "s_per_step": seconds,
                "weights_gib": weights_gib(bf16_model), "forward_peak_gib": peak})
        reference["official"] = out
    for variant in variants:
        model = bf16_model if variant == "bf16" else build_quantized(variant, bf16_model, config, device, emulated)
        weights = weights_gib(model)
        for name, case in cases.items():
            cost = 2.5 * base_seconds.get(name, 0.0)  # warm-up + timed forward, with a margin
            if time.perf_counter() - started + cost > args.time_budget:
                record({"case": name, "variant": variant, "skipped": f"time budget {args.time_budget:.0f} s"})
                continue
            out, seconds, peak = run_model(model, case, device, caption)
            row = {"case": name, "variant": variant, "s_per_step": seconds, "weights_gib": weights,
                   "forward_peak_gib": peak, "peak_gib": weights + peak}
            if variant == "bf16":
                reference[name], base_seconds[name] = out, seconds
                if name == "refine" and "official" in reference:
                    row["rel_l2_vs_official"] = rel_l2(out, reference["official"])
            else:
                row["rel_l2_vs_bf16"] = rel_l2(out, reference[name])
            del out
            record(row)
        if model is not bf16_model:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_table(result)
    print(f"wrote {out_path}")


def print_table(result):
    rows = result["rows"]
    base = {r["case"]: r["s_per_step"] for r in rows if r["variant"] == "bf16"}
    official = result.get("official_refine_s")
    print(f"\n{result['card']}, torch {result['torch']}; emulated on this card: "
          f"{', '.join(result['emulated_formats']) or 'none'}; {result['note']}")
    print("| case | variant | s/step | × bf16 | × official bf16 | weights GiB | peak GiB | rel. L2 vs bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["variant"] == "official_bf16":
            continue
        if "skipped" in r:
            print(f"| {r['case']} | {r['variant']} | skipped ({r['skipped']}) | | | | | |")
            continue
        ratio = r["s_per_step"] / base[r["case"]] if r["case"] in base else float("nan")
        vs_official = f"{r['s_per_step'] / official:.2f}×" if official and r["case"] == "refine" else "-"
        error = f"{r['rel_l2_vs_bf16']:.4f}" if "rel_l2_vs_bf16" in r else "-"
        print(f"| {r['case']} | {r['variant']} | {r['s_per_step']:.2f} | {ratio:.2f}× | {vs_official} | "
              f"{r['weights_gib']:.2f} | {r['peak_gib']:.1f} | {error} |")
    if official:
        print(f"official bf16 refine step: {official:.2f} s")


if __name__ == "__main__":
    main()
