"""How long does one whole LongCat DiT forward (one sampling step's model call) take: ours against
the official model, eager and compiled, at the published sizes?

The full-size DiT (13.58 B parameters, bf16, random weights) is built once on the GPU; the
official ``LongCatVideoTransformer3DModel`` (an uncommitted copy of its code, ``--official``) is
built on the meta device and given the same tensors (shared storage, no second copy). Cases:

* 480p: 480×832×93f, CFG batch 2, token grid 24×30×52, dense attention (ours: SDPA with cuDNN
  first, as ComfyUI orders it; official: flash-attn 2, here SDPA's flash backend);
* 720p: 704×1280×93f, batch 1, 24×44×80, BSA 0.9375 (official: its own BSA kernel);
* refine: 704×1280, 2× frames, batch 1, 48×44×80, BSA 0.9375.

Per case, each after one warm-up forward, timed with CUDA events around one synchronised forward:
official (unless ``--official`` is left out); ours on the torch block kernels (the same weights,
built with ``block_kernels=TORCH_KERNELS``: what the pack ran before the fused kernels); ours
eager (the fused block kernels, what the loaders pick on CUDA); ours with every block ``torch.compile``d (the per-block compile
of KJNodes / the wrappers: one compile serves all 48 blocks; ``--compile model``: the whole
DiT, as ComfyUI's TorchCompileModel does; the first call's time, compile included, is
reported). Peak VRAM is ``max_memory_allocated`` of the timed forward; rel. L2 of ours against the official output and against our torch path.

The official code needs flash-attn and diffusers, which the GPU machine lacks: ``flash_attn`` is
stood in by SDPA (flash backend), diffusers' ``ModelMixin`` / ``ConfigMixin`` /
``register_to_config`` by ``nn.Module``, a plain class and an identity decorator.

Usage (CUDA): python bench/bench_dit_step.py [--official <LongCat-Video checkout>] --out
bench/results/dit_step_<card>.json [--cases 480p,720p,refine] [--compile blocks|model|none]

``--profile CASE`` instead profiles one eager forward of ours (torch.profiler, CUDA kernels) and
writes the GPU time per kernel family: attention, matmul, our fused kernels, other elementwise.
"""

import argparse
import json
import platform
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import random_dit, same_weights
from longcat_pack.longcat.block_kernels import TORCH_KERNELS
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.options import BSA_OPTIONS_KEY
from torch.nn.attention import SDPBackend, sdpa_kernel

# name: (batch, latent T, H, W, BSA)
CASES = {"480p": (2, 24, 60, 104, False), "720p": (1, 24, 88, 160, True), "refine": (1, 48, 88, 160, True)}
OFFICIAL_BSA = {"sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
TEXT_TOKENS, REAL_TEXT_TOKENS = 512, 300


def _flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, **_):
    """flash-attn 2's ``flash_attn_func`` on ``[B, S, H, D]``, through SDPA's flash backend."""
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=softmax_scale)
    return out.transpose(1, 2)


def _flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, **_):
    """``flash_attn_varlen_func`` on packed ``[total, H, D]``: one SDPA call per sequence."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = [_flash_attn_func(q[None, cq[i]:cq[i + 1]], k[None, ck[i]:ck[i + 1]], v[None, ck[i]:ck[i + 1]])[0]
            for i in range(len(cq) - 1)]
    return torch.cat(outs)


def import_official(root: Path):
    """The official DiT class from a checkout, with the stand-ins above."""
    modeling = types.ModuleType("diffusers.models.modeling_utils")
    modeling.ModelMixin = torch.nn.Module
    config = types.ModuleType("diffusers.configuration_utils")
    config.ConfigMixin = type("ConfigMixin", (), {})
    config.register_to_config = lambda fn: fn
    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func, flash.flash_attn_varlen_func = _flash_attn_func, _flash_attn_varlen_func
    for name, module in {"diffusers": types.ModuleType("diffusers"),
                         "diffusers.models": types.ModuleType("diffusers.models"),
                         "diffusers.models.modeling_utils": modeling,
                         "diffusers.configuration_utils": config, "flash_attn": flash}.items():
        sys.modules.setdefault(name, module)
    sys.path.insert(0, str(root))
    from longcat_video.modules.longcat_video_dit import LongCatVideoTransformer3DModel

    return LongCatVideoTransformer3DModel


def build_official(cls, ours, bsa):
    with torch.device("meta"):
        model = cls(enable_flashattn2=True, enable_bsa=bsa, bsa_params=OFFICIAL_BSA if bsa else None,
                    cp_split_hw=[1, 1], text_tokens_zero_pad=True)
    missing, unexpected = model.load_state_dict(ours.state_dict(), assign=True, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"official model keys differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def timed(fn):
    """(output, ms, peak GiB) of one forward after a warm-up forward."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize()
    return out, start.elapsed_time(end), torch.cuda.max_memory_allocated() / 2**30


def rel_l2(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def run_case(name, ours, official_cls, compile_mode):
    b, t, h, w, bsa = CASES[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, 16, t, h, w, device="cuda", dtype=torch.bfloat16, generator=gen)
    ctx = torch.randn(b, TEXT_TOKENS, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    mask = (torch.arange(TEXT_TOKENS, device="cuda") < REAL_TEXT_TOKENS).long().expand(b, -1)
    timestep = torch.full((b,), 700.0, device="cuda")
    opts = {BSA_OPTIONS_KEY: BSASettings(sparsity=0.9375, chunk_3d_shape_q=(4, 4, 4),
                                         chunk_3d_shape_k=(4, 4, 4))} if bsa else {}
    row = {"case": name, "batch": b, "latent": [t, h, w], "tokens_per_item": t * h * w // 4, "bsa": bsa}

    row["block_kernels"] = ours.block_kernels.name
    model = ours

    def ours_forward():
        with torch.no_grad():
            return model(x, timestep, ctx, mask, transformer_options=dict(opts))

    want = None
    if official_cls is not None:
        official = build_official(official_cls, ours, bsa)

        def official_forward():
            with torch.no_grad():
                return official(x, timestep, ctx[:, None], mask)

        want, row["official_ms"], row["official_peak_gb"] = timed(official_forward)
        official = None  # frees the official modules (the weights are ours, shared)
    model = same_weights(ours, TORCH_KERNELS)
    torch_path, row["ours_torch_path_ms"], row["ours_torch_path_peak_gb"] = timed(ours_forward)
    model = ours
    got, row["ours_eager_ms"], row["ours_peak_gb"] = timed(ours_forward)
    row["rel_l2_fused_vs_torch_path"] = rel_l2(got, torch_path)
    if want is not None:
        row["rel_l2_ours_vs_official"] = rel_l2(got, want)
        row["rel_l2_torch_path_vs_official"] = rel_l2(torch_path, want)
    del want, torch_path
    if compile_mode == "blocks":
        for block in ours.blocks:
            block.compile()
    elif compile_mode == "model":  # what ComfyUI's TorchCompileModel does
        torch._dynamo.reset()
        model = torch.compile(ours)
    if compile_mode != "none":
        row["compile_mode"] = compile_mode
        start = time.perf_counter()
        ours_forward()
        torch.cuda.synchronize()
        row["ours_compiled_first_call_s"] = time.perf_counter() - start
        compiled, row["ours_compiled_ms"], row["ours_compiled_peak_gb"] = timed(ours_forward)
        row["rel_l2_compiled_vs_eager"] = rel_l2(compiled, got)
        for block in ours.blocks:  # back to eager for the next case
            block._compiled_call_impl = None
        model = ours
    if "official_ms" in row:
        row["official_over_ours_eager"] = row["official_ms"] / row["ours_eager_ms"]
        if "ours_compiled_ms" in row:
            row["official_over_ours_compiled"] = row["official_ms"] / row["ours_compiled_ms"]
    return row


# Kernel families by name, first match wins.
FAMILIES = (("bsa", ("_bsa_fwd", "_reorder_pool", "_pool", "topk", "_gating")),
            ("dense attention", ("flash", "fmha", "cudnn", "attention")),
            ("matmul", ("gemm", "nvjet", "sm90_xmma", "cutlass", "cublas")),
            ("fused block", ("_ln_modulate", "_rms_rope", "_gated_residual", "_swiglu")))


def profile_case(name, out):
    """GPU time per kernel family of one eager forward of ours (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    b, t, h, w, bsa = CASES[name]
    ours = random_dit(vector_std=0.3)
    x = torch.randn(b, 16, t, h, w, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(b, TEXT_TOKENS, 4096, device="cuda", dtype=torch.bfloat16)
    opts = {BSA_OPTIONS_KEY: BSASettings(sparsity=0.9375)} if bsa else {}

    def forward():
        with torch.no_grad():
            ours(x, torch.full((b,), 700.0, device="cuda"), ctx, transformer_options=dict(opts))

    forward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.self_device_time_total > 0:
            kernels[event.key] = (event.self_device_time_total / 1e3, event.count)
    families = {}
    for key, (ms_total, count) in kernels.items():
        family = next((f for f, parts in FAMILIES if any(p in key.lower() for p in parts)), "other")
        total, launches = families.get(family, (0.0, 0))
        families[family] = (total + ms_total, launches + count)
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    result = {"card": torch.cuda.get_device_name(), "case": name,
              "families_ms_launches": families, "top_kernels_ms_launches": top}
    out.write_text(json.dumps(result, indent=1))
    for family, (total, launches) in sorted(families.items(), key=lambda kv: -kv[1][0]):
        print(f"{family:16s} {total:9.1f} ms  {launches:6d} launches")
    for key, (total, launches) in top:
        print(f"{total:9.1f} ms {launches:6d}  {key[:110]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="LongCat-Video checkout (its root)")
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    parser.add_argument("--cases", default="480p,720p,refine")
    parser.add_argument("--compile", choices=("blocks", "model", "none"), default="blocks",
                        help="compile every block (default), the whole model, or nothing")
    parser.add_argument("--profile", choices=sorted(CASES), help="profile ours on this case instead")
    args = parser.parse_args()
    if args.profile:
        return profile_case(args.profile, args.out)
    official_cls = None if args.official is None else import_official(args.official)
    ours = random_dit(vector_std=0.3)
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
              "python": platform.python_version(), "rows": []}
    import triton

    result["triton"] = triton.__version__
    for name in args.cases.split(","):
        row = run_case(name, ours, official_cls, args.compile)
        result["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))  # after every case: partial runs survive
        print(json.dumps(row), flush=True)
    print(f"\n{result['card']}, torch {result['torch']}, triton {result['triton']}; ms per forward")
    print("| case | official | ours, torch path | ours eager | ours compiled (first call) | peak GiB ours / official "
          "| official ÷ ours eager / compiled |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        compiled = (f"{r['ours_compiled_ms']:.0f} ({r['ours_compiled_first_call_s']:.0f} s)"
                    if "ours_compiled_ms" in r else "-")
        official = f"{r['official_ms']:.0f}" if "official_ms" in r else "-"
        official_peak = f"{r['official_peak_gb']:.1f}" if "official_ms" in r else "-"
        ratio_e = f"{r['official_over_ours_eager']:.2f}×" if "official_ms" in r else "-"
        ratio_c = f"{r['official_over_ours_compiled']:.2f}×" if "official_over_ours_compiled" in r else "-"
        print(f"| {r['case']} | {official} | {r['ours_torch_path_ms']:.0f} | {r['ours_eager_ms']:.0f} | "
              f"{compiled} | {r['ours_peak_gb']:.1f} / {official_peak} | {ratio_e} / {ratio_c} |")


if __name__ == "__main__":
    main()
