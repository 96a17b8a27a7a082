"""Do two query chunks per program, or fp8 Q·Kᵀ, make the BSA kernel faster, and at what error?

At LongCat's grids (B=1, 32 heads, D=128, bf16, chunks 4×4×4, top-K s=0.9375, random normal
q/k/v, Triton gating) this times, interleaved and twice each, the raster kernel on chunk-ordered
K/V (TMA, the default) against: two query chunks per program (``q_pair``, 8 and 4 warps) and
fp8 e4m3 Q·Kᵀ (``qk_fp8``, casts included). Error: relative L2 of each variant against the fp32
torch reference with the same gating, on 2 heads. Prints a table, writes JSON.

Usage (CUDA): python bench/bench_levers.py --out bench/results/<name>.json [--grids 480p,720p,refine]
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack

import_pack()
from longcat_pack.kernels.bsa_fwd_triton import bsa_fwd_triton_raster
from longcat_pack.kernels.chunking import from_chunk_order, make_layout, to_chunk_order
from longcat_pack.kernels.gating import select_slabbed
from longcat_pack.kernels.gating_triton import pool_chunks_triton, topk_select_triton
from longcat_pack.kernels.reference import bsa_fwd_reference

GRIDS = {"480p": (24, 32, 52), "720p": (24, 44, 80), "refine": (48, 44, 80)}
HEADS, HEAD_DIM, CHUNK, S = 32, 128, (4, 4, 4), 0.9375
VARIANTS = {
    "base": {},
    "pair_w8": {"q_pair": True, "num_warps": 8},
    "pair_w4": {"q_pair": True, "num_warps": 4},
    "fp8": {"qk_fp8": True},
}


def _rel_l2(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _grid(name):
    grid = GRIDS[name]
    layout = make_layout(grid, CHUNK)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, layout.num_tokens, HEAD_DIM, device="cuda", generator=gen,
                           dtype=torch.bfloat16) for _ in range(3))
    kc, vc = to_chunk_order(k, layout), to_chunk_order(v, layout)
    del k, v
    qp = pool_chunks_triton(q, layout, raster=True)
    kp = pool_chunks_triton(kc, layout, raster=False)
    idx, cnt = select_slabbed(qp, kp, S, None, topk_select_triton)
    run = {n: (lambda kw=kw: bsa_fwd_triton_raster(q, kc, vc, idx, cnt, layout, layout,
                                                   kv_chunked=True, **kw))
           for n, kw in VARIANTS.items()}
    row = {"grid": name, "tokens": layout.num_tokens}
    outs = {n: f() for n, f in run.items()}
    ref = from_chunk_order(bsa_fwd_reference(to_chunk_order(q[:, :2], layout), kc[:, :2], vc[:, :2],
                                             idx[:, :2], cnt[:, :2], 64, 64), layout)
    for n, o in outs.items():
        row[f"{n}_rel_l2"] = _rel_l2(o[:, :2], ref)
    row["pair_equals_base"] = bool(torch.equal(outs["pair_w8"], outs["base"]))
    del outs
    for rep in ("a", "b"):
        for n, f in run.items():
            row[f"{n}_ms_{rep}"] = do_bench(f, warmup=25, rep=200, return_mode="median")
    row["fp8_cast_ms"] = do_bench(lambda: (q.to(torch.float8_e4m3fn), kc.to(torch.float8_e4m3fn)),
                                  warmup=10, rep=100, return_mode="median")
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--grids", default="480p,720p,refine")
    args = ap.parse_args()
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "python": platform.python_version(),
              "heads": HEADS, "head_dim": HEAD_DIM, "chunk": CHUNK, "sparsity": S, "rows": []}
    for name in args.grids.split(","):
        row = _grid(name)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    print(f"card: {result['card']}")
    print(f"{'grid':8} " + " ".join(f"{n:>17}" for n in VARIANTS) + "   (ms a/b; rel L2)")
    for r in result["rows"]:
        cells = [f"{r[n + '_ms_a']:.2f}/{r[n + '_ms_b']:.2f} {r[n + '_rel_l2']:.1e}" for n in VARIANTS]
        print(f"{r['grid']:8} " + " ".join(f"{c:>17}" for c in cells))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
