"""How much faster is one LongCat DiT block at the refine grid with BSA instead of dense cuDNN?

One block's work over N video tokens (B=1, d=4096, 32 heads × 128, bf16), built from torch ops
(not the model package, so this stays a kernels benchmark): self-attention qkv (4096→12288),
attention core, proj (4096→4096); cross-attention q (4096→4096), kv over 512 text tokens
(4096→8192), core (SDPA over the 512 keys), proj; SwiGLU w1, w3 (4096→11008), silu·product, w2
(11008→4096). Norms, adaLN, RoPE and residual adds are left out (token-wise, small). The
self-attention core is either dense SDPA under the cuDNN backend or our
``block_sparse_attention`` (top-K, chunks 4×4×4), both on the same strided q/k/v views.

Prints a table and writes JSON: total ms (``triton.testing.do_bench`` median), the attention
core alone, and the peak VRAM of one block call (``torch.cuda.max_memory_allocated``).

Usage (on a CUDA machine): python bench/bench_dit_block.py --out results.json [--grid 48,44,80]
"""

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from _common import HEAD_DIM, HEADS, ms, peak_mb
from longcat_pack.kernels import block_sparse_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

DIM, FFN, TEXT = HEADS * HEAD_DIM, 11008, 512


def _weights(gen):
    mk = lambda o, i: (torch.randn(o, i, device="cuda", generator=gen) * i**-0.5).to(torch.bfloat16)
    return {"qkv": mk(3 * DIM, DIM), "proj": mk(DIM, DIM), "xq": mk(DIM, DIM),
            "xkv": mk(2 * DIM, DIM), "xproj": mk(DIM, DIM), "w1": mk(FFN, DIM),
            "w3": mk(FFN, DIM), "w2": mk(DIM, FFN)}


def _heads(t, n):
    """``[n, k·DIM]`` → k views ``[1, HEADS, n, HEAD_DIM]`` (no copy)."""
    return t.view(1, n, -1, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)


def _self_core(q, k, v, grid, mode, s):
    if mode == "dense":
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)
    return block_sparse_attention(q, k, v, grid, grid, sparsity=s)


def block(x, text, w, grid, mode, s):
    """One block's matmuls and attention cores; x ``[N, DIM]``, text ``[TEXT, DIM]``."""
    n = x.shape[0]
    q, k, v = _heads(x @ w["qkv"].t(), n)
    a = _self_core(q, k, v, grid, mode, s).transpose(1, 2).reshape(n, DIM)
    x = x + a @ w["proj"].t()
    xq = _heads(x @ w["xq"].t(), n)[0]
    xk, xv = _heads(text @ w["xkv"].t(), TEXT)
    c = F.scaled_dot_product_attention(xq, xk, xv).transpose(1, 2).reshape(n, DIM)
    x = x + c @ w["xproj"].t()
    return x + (F.silu(x @ w["w1"].t()) * (x @ w["w3"].t())) @ w["w2"].t()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_dit_block.json")
    ap.add_argument("--grid", default="48,44,80")
    ap.add_argument("--sparsity", type=float, default=0.9375)
    args = ap.parse_args()
    grid = tuple(int(g) for g in args.grid.split(","))
    n = math.prod(grid)
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = _weights(gen)
    x = torch.randn(n, DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    text = torch.randn(TEXT, DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    q, k, v = _heads(x @ w["qkv"].t(), n)
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "grid": grid, "tokens": n, "sparsity": args.sparsity,
              "modes": {}}
    for mode in ("dense", "bsa"):
        run = lambda mode=mode: block(x, text, w, grid, mode, args.sparsity)
        core = lambda mode=mode: _self_core(q, k, v, grid, mode, args.sparsity)
        extra = peak_mb(run) / 1024
        absolute = torch.cuda.max_memory_allocated() / 2**30
        result["modes"][mode] = {"block_ms": ms(run), "self_attn_core_ms": ms(core),
                                 "block_peak_extra_gb": extra, "block_peak_abs_gb": absolute}
        print(mode, result["modes"][mode], flush=True)
    d, b = result["modes"]["dense"], result["modes"]["bsa"]
    result["speedup"] = d["block_ms"] / b["block_ms"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nOne DiT block, {result['card']}, grid {grid} (N={n}), s={args.sparsity}")
    print("| attention | block ms | self-attn core ms | peak VRAM of the call (GB, above inputs) |")
    print("|---|---|---|---|")
    for mode, r in result["modes"].items():
        print(f"| {mode} | {r['block_ms']:.1f} | {r['self_attn_core_ms']:.1f} | "
              f"{r['block_peak_extra_gb']:.2f} |")
    print(f"block speedup {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
