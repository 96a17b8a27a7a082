"""How much GPU memory and time does one full-size LongCat DiT forward take per workflow stage,
with and without token chunking, and does the activation estimate cover the measured peak?

Builds the published DiT (13.58 B parameters, bf16, random weights: only sizes matter here) on
the GPU and runs one forward per stage, each with token chunking on (the default,
``longcat.memory.TOKEN_CHUNK``) and off (``longcat_token_chunk`` = 0), timed interleaved (on,
off, on, off, ...) after a warm-up of each, with the peak VRAM above the weights
(``torch.cuda.max_memory_allocated`` − allocated before the call) against
``longcat.memory.forward_peak_bytes`` (the estimate ComfyUI plans with):

* ``distill``: 480×832, 93 frames (token grid 24×30×52), batch 1, dense;
* ``cfg480``: the same with CFG, batch 2;
* ``refine``: 704×1280, 2× frames (token grid 48×44×80), batch 1, BSA at the published setting;
* ``continuation``: 480p, 13 conditioning frames (4 latents) in a KV cache, 20 noise latents,
  batch 2 (CFG); the cache on the GPU, and (row ``continuation_offloaded``) in pinned CPU
  memory streamed one block ahead (same inputs: the outputs must be equal).

Per row: ms per forward (median), peak GiB, estimate GiB, estimate / peak (target 1.0–1.3) and
the chunking's time cost (target ≤ 3 %). A one-line summary of the largest live tensors at the
peak of the chunked refine forward (``--snapshot``) tells where the memory goes.

Usage (CUDA): python bench/bench_dit_memory.py --out bench/results/<name>.json
    [--stages distill,cfg480,refine,continuation] [--reps 2]
``--tiny`` runs a tiny config on the CPU as a smoke test of the script itself.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from _common import random_dit
from longcat_pack.longcat import memory
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.options import BSA_OPTIONS_KEY, TOKEN_CHUNK_KEY

TINY = dict(hidden_size=128, depth=2, num_heads=2, caption_channels=32, adaln_tembed_dim=32,
            frequency_embedding_size=16)
# name: (batch, latent frames, latent H, latent W, BSA, cached latent frames)
STAGES = {"distill": (1, 24, 60, 104, False, 0), "cfg480": (2, 24, 60, 104, False, 0),
          "refine": (1, 48, 88, 160, True, 0), "continuation": (2, 20, 60, 104, False, 4)}
TINY_STAGES = {"distill": (1, 3, 8, 8, False, 0), "cfg480": (2, 3, 8, 8, False, 0),
               "refine": (1, 8, 8, 8, True, 0), "continuation": (2, 3, 8, 8, False, 2)}
GIB = 2**30


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device):
    """(ms, peak bytes above what was allocated before) of one call."""
    sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    sync(device)
    ms = (time.perf_counter() - start) * 1e3
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    del out
    return ms, peak


def stage_inputs(model, stage, device, dtype, caption, gen_seed=0):
    b, t, h, w, bsa, cached = stage
    g = torch.Generator(device="cpu").manual_seed(gen_seed)
    x = torch.randn(b, model.in_channels, t, h, w, generator=g).to(device, dtype)
    ctx = torch.randn(b, 512, caption, generator=g).to(device, dtype)
    mask = torch.ones(b, 512, device=device)
    cache = None
    if cached:
        cond = torch.randn(1, x.shape[1], cached, h, w, generator=g).to(device, dtype)
        with torch.no_grad():
            cache = model.build_kv_cache(cond)
    opts = {BSA_OPTIONS_KEY: BSASettings(**({} if device.type == "cuda" else
                                             {"chunk_3d_shape_q": (2, 2, 2), "chunk_3d_shape_k": (2, 2, 2)}))} \
        if bsa else {}
    return x, ctx, mask, cache, opts


def forward_fn(model, x, ctx, mask, cache, cached, opts, chunk):
    timestep = torch.full((x.shape[0],), 500.0, device=x.device)

    def run():
        with torch.no_grad():
            return model(x, timestep, ctx, mask, num_cond_latents=cached, kv_cache=cache,
                         transformer_options={**opts, TOKEN_CHUNK_KEY: chunk})
    return run


def estimate(model, stage, itemsize, fused):
    b, t, h, w, bsa, cached = stage
    _, ph, pw = model.patch_size
    shape = memory.ForwardShape(batch=b, frames=t, per_frame=(h // ph) * (w // pw), cached_frames=cached,
                                bsa=bsa)
    return memory.forward_peak_bytes(shape, hidden=model.hidden_size, heads=model.num_heads,
                                     ffn_hidden=model.blocks[0].ffn.w1.out_features, itemsize=itemsize,
                                     fused=fused)


def run_stage(model, name, stage, device, dtype, caption, reps):
    x, ctx, mask, cache, opts = stage_inputs(model, stage, device, dtype, caption)
    cached = stage[5]
    runs = {"chunked": memory.TOKEN_CHUNK, "unchunked": 0}
    times = {k: [] for k in runs}
    peaks = {}
    outputs = {}
    for key, chunk in runs.items():  # warm-up: Triton compilation, cuDNN plans, RoPE tables
        outputs[key] = forward_fn(model, x, ctx, mask, cache, cached, opts, chunk)().float().cpu()
    for _ in range(reps):
        for key, chunk in runs.items():
            ms, peak = measure(forward_fn(model, x, ctx, mask, cache, cached, opts, chunk), device)
            times[key].append(ms)
            peaks[key] = None if peak is None else max(peaks.get(key) or 0, peak)
    est = estimate(model, stage, torch.empty((), dtype=dtype).element_size(), device.type == "cuda")
    rows = []
    for key in runs:
        peak = peaks[key]
        rows.append(dict(stage=name, chunking=key, batch=stage[0], latent=list(stage[1:4]), bsa=stage[4],
                         cached_frames=cached, ms=statistics.median(times[key]), ms_all=times[key],
                         peak_gib=None if peak is None else peak / GIB,
                         estimate_gib=est / GIB if key == "chunked" else None,
                         estimate_over_peak=est / peak if key == "chunked" and peak else None))
    rows[0]["chunk_time_cost"] = rows[0]["ms"] / rows[1]["ms"] - 1
    rows[0]["max_abs_diff_vs_unchunked"] = float((outputs["chunked"] - outputs["unchunked"]).abs().max())
    if cached:
        offloaded = {i: (memory.pin(k), memory.pin(v)) for i, (k, v) in cache.items()}
        fn = forward_fn(model, x, ctx, mask, offloaded, cached, opts, memory.TOKEN_CHUNK)
        out = fn().float().cpu()
        ms, peak = measure(fn, device)
        rows.append(dict(stage=f"{name}_offloaded", chunking="chunked", batch=stage[0],
                         latent=list(stage[1:4]), bsa=False, cached_frames=cached, ms=ms, ms_all=[ms],
                         peak_gib=None if peak is None else peak / GIB, equal_to_cache_on_gpu=bool(torch.equal(out, outputs["chunked"])),
                         cache_gib=sum(k.nbytes + v.nbytes for k, v in cache.values()) / GIB))
    return rows


def snapshot_summary(model, stage, device, dtype, caption, top=8):
    """The largest live allocations at the peak of one chunked forward (CUDA memory history)."""
    x, ctx, mask, cache, opts = stage_inputs(model, stage, device, dtype, caption)
    fn = forward_fn(model, x, ctx, mask, cache, stage[5], opts, memory.TOKEN_CHUNK)
    torch.cuda.memory._record_memory_history(max_entries=200000)
    try:
        fn()
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    # Replay the trace: live blocks at the moment the allocated total peaked.
    live, best, best_live, total = {}, 0, {}, 0
    for event in snap["device_traces"][0]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
        if total > best:
            best, best_live = total, dict(live)
    biggest = sorted(best_live.values(), key=lambda e: -e["size"])[:top]

    def where(e):
        frames = [f for f in e.get("frames", []) if "longcat" in f.get("filename", "")
                  or "kernels" in f.get("filename", "")]
        f = frames[0] if frames else (e.get("frames") or [{}])[0]
        return f"{Path(f.get('filename', '?')).name}:{f.get('line', '?')} {f.get('name', '')}"

    return {"peak_traced_gib": best / GIB,
            "largest": [{"gib": e["size"] / GIB, "at": where(e)} for e in biggest]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON output path")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--reps", type=int, default=2, help="timed forwards per variant")
    parser.add_argument("--snapshot", default="refine", help="stage whose peak is itemised ('' = none)")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = random_dit(TINY if args.tiny else None, device, dtype)
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    caption = model.y_embedder.y_proj[0].in_features
    stages = TINY_STAGES if args.tiny else STAGES
    rows, result = [], {}
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"

    def save():
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(dict(card=card, torch=torch.__version__, dtype=str(dtype),
                                                weights_gib=weights_gib, token_chunk=memory.TOKEN_CHUNK,
                                                rows=rows, **result), indent=1))

    for name in [s for s in args.stages.split(",") if s]:
        rows += run_stage(model, name, stages[name], device, dtype, caption, args.reps)
        save()
    if args.snapshot and device.type == "cuda":
        result["snapshot"] = {args.snapshot: snapshot_summary(model, stages[args.snapshot], device, dtype, caption)}
        save()
    print(f"{card} · torch {torch.__version__} · DiT weights {weights_gib:.2f} GiB ({dtype}) · "
          f"token chunk {memory.TOKEN_CHUNK}")
    print(f"{'stage':24} {'chunking':9} {'ms':>9} {'peak GiB':>9} {'est GiB':>8} {'est/peak':>8} {'cost':>7}")
    for r in rows:
        est = f"{r['estimate_gib']:8.2f}" if r.get("estimate_gib") is not None else f"{'':8}"
        ratio = f"{r['estimate_over_peak']:8.2f}" if r.get("estimate_over_peak") is not None else f"{'':8}"
        cost = f"{r['chunk_time_cost'] * 100:+6.1f}%" if "chunk_time_cost" in r else f"{'':7}"
        peak = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else f"{'':9}"
        print(f"{r['stage']:24} {r['chunking']:9} {r['ms']:9.1f} {peak} {est} {ratio} {cost}")
    for name, snap in result.get("snapshot", {}).items():
        print(f"{name} peak, largest live tensors: " + ", ".join(f"{e['gib']:.2f} GiB {e['at']}" for e in snap["largest"]))


if __name__ == "__main__":
    main()
