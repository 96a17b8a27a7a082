"""How long does one LongCat-Video-Avatar DiT call (one guidance pass of a sampling step) take,
ours dense and with BSA against the official Avatar DiT (dense, its only working mode on these
grids), at 480p and 720p, and where does the time go?

The full-size Avatar 1.5 DiT (15.85 B parameters, bf16, random weights) is built once on the
GPU; the official ``LongCatVideoAvatarTransformer3DModel`` (an uncommitted copy of its code,
``--official``) is built on the meta device and given the same tensors (no second copy). The
call is a first-segment image-to-video call: 93 frames → 24 latents, latent 0 the image
(``num_cond_latents=1``), one speaker.

* 480p: 480×832 → token grid 24×30×52, batch 2 (the guided step's pass A: [negative, positive]
  text, both with audio);
* 720p: 768×1280 → 24×48×80, batch 1 (a whole DMD step at cfg 1, or the guided step's pass B).
* ours dense: the injected attention is SDPA (cuDNN first, as ComfyUI orders it);
  ours BSA: sparsity 0.9375, chunks 4×4×4 (our kernels run the official asserts' failing grids:
  the one-frame image call, 23 noise frames, 480p's 30×52);
  official: flash-attn 2 stood in by SDPA's flash backend; diffusers and the audio-processing
  imports stood in as in ``bench_dit_step.py``.

Each timing: one warm-up call, then one synchronised call between CUDA events; peak VRAM is
``max_memory_allocated`` of that call. ``--profile`` adds, per model and case, the GPU time per
kernel family (attention / BSA / matmul / fused block / other) from torch.profiler, which gives
the official/ours ratio per stage.

Usage (CUDA): python bench/bench_avatar_step.py --out bench/results/avatar_step_<card>.json
[--official <LongCat-Video checkout>] [--cases 480p,720p] [--profile]
``--tiny`` runs a 2-block model at a tiny size on any device (a check of the script, not a timing).
"""

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _standalone import import_pack

import_pack()
from longcat_pack.longcat.avatar.dit import LongCatAvatarDiT
from longcat_pack.longcat.bsa_settings import BSASettings  # noqa: E402
from longcat_pack.longcat.options import BSA_LOG_KEY, BSA_OPTIONS_KEY

# name: (batch, latent T, latent H, latent W)
CASES = {"480p": (2, 24, 60, 104), "720p": (1, 24, 96, 160)}
TINY_CASES = {"480p": (2, 6, 12, 20), "720p": (1, 6, 16, 24)}
TINY = dict(hidden_size=64, depth=2, num_heads=2, caption_channels=64, adaln_tembed_dim=32,
            frequency_embedding_size=16, intermediate_dim=16, output_dim=16, context_tokens=4)
TEXT_TOKENS, REAL_TEXT_TOKENS = 512, 300
FAMILIES = (("bsa", ("_bsa_fwd", "_reorder_pool", "_pool", "topk", "_gating")),
            ("attention", ("flash", "fmha", "cudnn", "attention", "softmax")),
            ("matmul", ("gemm", "nvjet", "sm90_xmma", "cutlass", "cublas")),
            ("fused block", ("_ln_modulate", "_rms_rope", "_gated_residual", "_swiglu")))


def _flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, **_):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION] if q.is_cuda else [SDPBackend.MATH]
    with sdpa_kernel(backends):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=softmax_scale)
    return out.transpose(1, 2)


def _flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, **_):
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return torch.cat([_flash_attn_func(q[None, cq[i]:cq[i + 1]], k[None, ck[i]:ck[i + 1]],
                                       v[None, ck[i]:ck[i + 1]])[0] for i in range(len(cq) - 1)])


def import_official(root: Path):
    """The official Avatar DiT class from a checkout, with stand-ins for what the GPU machine lacks."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # its map code is @torch.compile'd (unused here)
    import importlib.machinery

    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        sys.modules.setdefault(name, mod)
        return sys.modules[name]

    module("flash_attn", flash_attn_func=_flash_attn_func, flash_attn_varlen_func=_flash_attn_varlen_func)
    module("diffusers", ConfigMixin=type("ConfigMixin", (), {}), ModelMixin=torch.nn.Module)
    module("diffusers.configuration_utils", ConfigMixin=type("ConfigMixin", (), {}), register_to_config=lambda f: f)
    module("diffusers.models")
    module("diffusers.models.modeling_utils", ModelMixin=torch.nn.Module)
    for name in ("librosa", "imageio", "pyloudnorm", "scipy", "scipy.signal", "torchvision", "soundfile", "tqdm"):
        module(name, tqdm=lambda x, **_: x)

    def no_bsa(*_, **__):
        raise RuntimeError("official BSA is not benchmarked (it asserts on these grids)")

    module("longcat_video.block_sparse_attention.bsa_interface", flash_attn_bsa_3d=no_bsa)
    audio = module("longcat_video.audio_process")
    audio.__path__ = [str(root / "longcat_video" / "audio_process")]
    sys.path.insert(0, str(root))
    from longcat_video.audio_process import torch_utils

    torch_utils.torch_gc = lambda: None
    from longcat_video.modules.avatar.longcat_video_dit_avatar import (
        LongCatVideoAvatarTransformer3DModel,
    )

    return LongCatVideoAvatarTransformer3DModel


def build_ours(config, device, dtype):
    """Random weights on ``device``, the block kernels the loaders pick there ("auto")."""
    from longcat_pack.longcat.build import resolve_block_kernels

    kernels = resolve_block_kernels("auto", device, dtype, config)
    model = LongCatAvatarDiT(**config, device="meta", dtype=dtype, block_kernels=kernels).to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim > 1 else 0.3)
    return model.eval()


def build_official(cls, ours, config):
    with torch.device("meta"):
        model = cls(**config, enable_flashattn2=True, cp_split_hw=[1, 1], text_tokens_zero_pad=True)
    missing, unexpected = model.load_state_dict(ours.state_dict(), assign=True, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"official model keys differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def timed(fn, device):
    """(output, ms, peak GiB or None) of one call after a warm-up call."""
    fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1e3
    return out, ms, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def families(fn):
    """GPU ms per kernel family of one call (after the timed calls warmed everything up)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.self_device_time_total > 0:
            name = event.key.lower()
            family = next((f for f, parts in FAMILIES if any(p in name for p in parts)), "other")
            out[family] = out.get(family, 0.0) + event.self_device_time_total / 1e3
    return out


def rel_l2(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def run_case(name, shape, ours, official, layers, channels, device, profile):
    b, t, h, w = shape
    gen = torch.Generator(device=device).manual_seed(0)
    caption = ours.y_embedder.y_proj[0].in_features
    dtype = ours.x_embedder.proj.weight.dtype
    x = torch.randn(b, 16, t, h, w, device=device, dtype=dtype, generator=gen)
    ctx = torch.randn(b, TEXT_TOKENS, caption, device=device, dtype=dtype, generator=gen)
    mask = (torch.arange(TEXT_TOKENS, device=device) < REAL_TEXT_TOKENS).long().expand(b, -1)
    audio = torch.randn(b, 1 + 4 * (t - 1), 5, layers, channels, device=device, generator=gen)
    timestep = torch.full((b, t), 700.0, device=device)
    timestep[:, 0] = 0
    row = {"case": name, "batch": b, "latent": [t, h, w], "tokens_per_item": t * h * w // 4}

    def ours_call(opts):
        def call():
            with torch.no_grad():
                return ours(x, timestep, ctx, mask, num_cond_latents=1, audio=audio, transformer_options=dict(opts))
        return call

    dense = ours_call({})
    got, row["ours_dense_ms"], row["ours_dense_peak_gb"] = timed(dense, device)
    log = _Density()
    bsa = ours_call({BSA_OPTIONS_KEY: BSASettings(sparsity=0.9375), BSA_LOG_KEY: log})
    sparse, row["ours_bsa_ms"], row["ours_bsa_peak_gb"] = timed(bsa, device)
    row["bsa_density_mean"] = log.mean()
    row["rel_l2_bsa_vs_dense"] = rel_l2(sparse, got)
    if official is not None:
        def official_call():
            with torch.no_grad():
                return official(x, timestep, ctx[:, None], mask, num_cond_latents=1, audio_embs=audio)

        want, row["official_ms"], row["official_peak_gb"] = timed(official_call, device)
        row["rel_l2_ours_dense_vs_official"] = rel_l2(got, want)
        row["ours_dense_over_official"] = row["ours_dense_ms"] / row["official_ms"]
        row["ours_bsa_over_official"] = row["ours_bsa_ms"] / row["official_ms"]
        if profile and device.type == "cuda":
            row["official_family_ms"] = families(official_call)
    if profile and device.type == "cuda":
        row["ours_dense_family_ms"] = families(dense)
        row["ours_bsa_family_ms"] = families(bsa)
        if "official_family_ms" in row:
            row["official_over_ours_dense_per_family"] = {
                f: row["official_family_ms"][f] / v for f, v in row["ours_dense_family_ms"].items()
                if v > 0 and f in row["official_family_ms"]}
    return row


class _Density:
    """A BSA log that keeps the density of every sparse call."""

    def __init__(self):
        self.values = []

    def record(self, block_index, report):
        self.values.append(report.density)

    def mean(self):
        return sum(float(v) for v in self.values) / max(len(self.values), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="LongCat-Video checkout (its root)")
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    parser.add_argument("--cases", default="480p,720p")
    parser.add_argument("--profile", action="store_true", help="GPU time per kernel family (CUDA)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model at tiny sizes (script check)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        raise SystemExit("the full-size bench needs CUDA (use --tiny to check the script)")
    layers, channels = (3, 8) if args.tiny else (5, 1280)
    config = dict(TINY if args.tiny else {}, audio_block=layers, audio_channel=channels)
    # bf16 as the official model runs; fp32 for the CPU script check (the official fp32 islands
    # rely on CUDA autocast).
    ours = build_ours(config, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    official = None
    if args.official:
        official = build_official(import_official(args.official.resolve()), ours,
                                  dict(config, audio_prenorm=False))
    cases = TINY_CASES if args.tiny else CASES
    rows = []
    for name in args.cases.split(","):
        row = run_case(name, cases[name], ours, official, layers, channels, device, args.profile)
        rows.append(row)
        print(f"{name:5s} ours dense {row['ours_dense_ms']:9.1f} ms  BSA {row['ours_bsa_ms']:9.1f} ms "
              f"(density {row['bsa_density_mean']:.3f})"
              + (f"  official {row['official_ms']:9.1f} ms  dense/official {row['ours_dense_over_official']:.3f}  "
                 f"BSA/official {row['ours_bsa_over_official']:.3f}  rel.L2 {row['rel_l2_ours_dense_vs_official']:.2e}"
                 if "official_ms" in row else "")
              + (f"  peak dense {row['ours_dense_peak_gb']:.1f} / BSA {row['ours_bsa_peak_gb']:.1f} GiB"
                 if row["ours_dense_peak_gb"] is not None else ""))
    result = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "tiny": args.tiny,
              "torch": torch.__version__, "block_kernels": ours.block_kernels.name, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
