"""Self- and cross-attention of the LongCat DiT, and the default dense attention function.

Self-attention (key prefix ``attn``): qkv → per-head RMSNorm on q, k → 3D RoPE → attention core →
proj. The core is block-sparse (``kernels.block_sparse_attention``) when the transformer options
carry ``longcat_bsa`` settings that apply to this block and sigma and the grid has T > 1;
otherwise the injected dense ``attention`` function (ComfyUI's ``optimized_attention`` signature,
so its backends and patches apply). Conditioning split and KV cache follow the official code
(docs/pipelines.md). Cross-attention (``cross_attn``) is always dense and has no RoPE.
The q/k RMSNorm + RoPE is the injected ``block_kernels`` (``longcat/block_kernels.py``: torch ops
or the fused kernels). Imports nothing from ComfyUI.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..kernels import block_sparse_attention
from .block_kernels import TORCH_KERNELS, norm_rope, split_heads
from .layers import RMSNorm
from .memory import per_frame_rows
from .options import BSA_LOG_KEY
from .rope import apply_rope


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """``[B, heads, S, D]`` → ``[B, S, heads·D]`` (head-major features, what ``proj`` expects)."""
    b, heads, s, d = out.shape
    return out.transpose(1, 2).reshape(b, s, heads * d)


def sdpa_attention(q, k, v, heads, skip_reshape=True, **kwargs):
    """Default dense attention on torch SDPA, in the one form the DiT calls ComfyUI's
    ``optimized_attention``: ``(q, k, v, heads, skip_reshape=True, transformer_options=...)``.

    q ``[B, heads, Sq, D]``, k/v ``[B, heads, Sk, D]`` → ``[B, Sq, heads·D]``. Extra kwargs
    (``transformer_options``) are accepted and ignored.
    """
    if not skip_reshape:
        raise ValueError("sdpa_attention takes [B, heads, S, D] inputs: skip_reshape must be True, got False")
    if not q.is_cuda:
        return _merge_heads(F.scaled_dot_product_attention(q, k, v))
    # cuDNN first, as ComfyUI orders SDPA's backends (comfy/ops.py): on Hopper it is the fastest
    # dense kernel, so our standalone runs time the attention a ComfyUI user gets.
    with sdpa_kernel(_SDPA_PRIORITY, set_priority=True):
        return _merge_heads(F.scaled_dot_product_attention(q, k, v))


_SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                  SDPBackend.MATH]


@dataclass
class SelfAttnPlan:
    """What one forward's self-attention calls look like (shared by all blocks).

    grid: ``(T, H, W)`` token grid of the tokens in x. cond_frames: leading frames of x that are
    conditioning (split path; 0 = none). cached_frames: frames held in the KV cache in front of x.
    rope: cos/sin ``[(cached_frames + T)·H·W, D]`` over the key grid. sigma: current sigma or None.
    return_kv: return the conditioning tokens' (all tokens' if cond_frames = 0) pre-RoPE k, v.
    context_parallel: None, or a ``parallel.ContextParallel`` (x holds this rank's token shard;
    the attention below runs on this rank's heads over all tokens).
    token_chunk: tokens per slice of the per-token work (``memory.frame_slices``); 0 = one slice.
    """

    grid: tuple[int, int, int]
    rope: tuple[torch.Tensor, torch.Tensor]
    cond_frames: int = 0
    cached_frames: int = 0
    sigma: float | None = None
    return_kv: bool = False
    context_parallel: object | None = None
    token_chunk: int = 0


def _core(q, k, v, grid_q, grid_k, heads, attention, opts, bsa, reports):
    """Attention core on ``[B, heads, S, D]`` → ``[B, Sq, heads·D]``; BSA when ``bsa`` is not None.

    With a BSA log in ``opts`` each sparse call's report is appended to ``reports`` (the DiT
    records them outside the block, so a compiled block has no Python side effects)."""
    if bsa is None:
        return attention(q, k, v, heads, skip_reshape=True, transformer_options=opts)
    want_report = opts.get(BSA_LOG_KEY) is not None
    result = block_sparse_attention(q, k, v, grid_q, grid_k, **bsa.kernel_kwargs(), return_report=want_report)
    if want_report:
        result, report = result
        reports.append(report)
    return _merge_heads(result)


class SelfAttention(nn.Module):
    """Self-attention. Keys ``qkv`` (feature order [q | k | v], head-major), ``q_norm``, ``k_norm``, ``proj``."""

    def __init__(self, dim: int, num_heads: int, attention, device=None, dtype=None, operations=nn,
                 block_kernels=TORCH_KERNELS):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention = attention
        self.block_kernels = block_kernels
        self.qkv = operations.Linear(dim, 3 * dim, bias=True, device=device, dtype=dtype)
        self.q_norm = RMSNorm(self.head_dim, device=device, dtype=dtype)
        self.k_norm = RMSNorm(self.head_dim, device=device, dtype=dtype)
        self.proj = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x, plan: SelfAttnPlan, opts: dict, cache=None, bsa=None, prenorm=None):
        """x ``[B, N, C]`` → (``[B, N, C]``, (k, v) pre-RoPE ``[B, heads, n, D]`` if plan.return_kv
        else None, BSA reports of the sparse calls).

        cache: None or this block's cached conditioning (k, v) ``[1 or B, heads, Tc·H·W, D]``
        (pre-RoPE, any device), placed in front of this call's keys. bsa: BSA settings, or None
        for the dense ``attention``. prenorm: None (x is the normalised input), or
        ``prenorm(x_slice, batch_slice, frame_slice)`` giving the normalised input of a slice of
        the residual stream x, so qkv is projected slice by slice (``memory.per_frame_rows``).
        """
        cp = plan.context_parallel
        q, k, v, kv_out = self._roped_qkv(x, plan, cache, prenorm)
        n_cond = plan.cond_frames * plan.grid[1] * plan.grid[2]
        reports = []
        out = self._attend(q, k, v, plan, opts, n_cond, bsa, reports)
        del q, k, v  # qkv (3 token streams) is free before proj allocates its output
        if cp is not None:  # back to this rank's tokens, every head
            out = cp.sequence_from_heads(out, plan.grid)
        return self.proj(out), kv_out, reports

    def _roped_qkv(self, x, plan: SelfAttnPlan, cache, prenorm=None):
        """q and k (normed, roped; k over ``[cache; x]``), v, each ``[B, heads, n, D]``, and the
        pre-RoPE (k, v) to return when ``plan.return_kv`` (else None). prenorm: as in ``forward``."""
        rope_k = cache is None and not plan.return_kv  # else k is roped after the cache joins it
        q, k, v = self._qkv(x, plan, plan.context_parallel, rope_k, prenorm)
        n_cond = plan.cond_frames * plan.grid[1] * plan.grid[2]
        kv_out = None
        if plan.return_kv:
            kv_out = (k[:, :, :n_cond], v[:, :, :n_cond]) if n_cond else (k, v)
        if cache is not None:
            k = torch.cat([_match(cache[0], k), k], dim=2)
            v = torch.cat([_match(cache[1], v), v], dim=2)
        if not rope_k:
            # [cache; k] is this call's own tensor: rope it in place (else k may be viewed by kv_out).
            k = rope_rows(k, *plan.rope, plan.token_chunk, in_place=cache is not None)
        return q, k, v, kv_out

    def _qkv(self, x, plan: SelfAttnPlan, cp, rope_k: bool, prenorm=None):
        """q (normed, roped), k (normed; roped if ``rope_k``), v, each ``[B, heads, n, D]``; under
        context parallel ``cp``, this rank's heads over every token. With ``prenorm`` (see
        ``forward``) qkv is projected slice by slice of whole frames.

        Context parallel norms and ropes with torch ops after its all-to-all (RoPE needs the
        global positions, and the fused kernels take the packed ``[B, n, 3·C]`` qkv)."""
        if prenorm is None:
            qkv = self.qkv(x)
        else:
            qkv = per_frame_rows(lambda xs, bs, fs: self.qkv(prenorm(xs, bs, fs)), x, plan.grid[0],
                                 plan.token_chunk)
        cos, sin = plan.rope
        if cp is None:
            return self.block_kernels.qkv_norm_rope(qkv, self.q_norm, self.k_norm, self.num_heads, cos, sin, rope_k)
        q, k, v = cp.heads_from_sequence(*split_heads(qkv, 3, self.num_heads), plan.grid)
        return (*norm_rope(q, k, self.q_norm, self.k_norm, cos, sin, rope_k), v)

    def _attend(self, q, k, v, plan: SelfAttnPlan, opts: dict, n_cond: int, bsa, reports):
        """Plain, cached (queries over [cache; x]) or conditioning-split attention → ``[B, N, C]``."""
        t, h, w = plan.grid
        heads = q.shape[1]  # fewer than num_heads under context parallel
        if not n_cond:
            grid_k = (plan.cached_frames + t, h, w)
            return _core(q, k, v, plan.grid, grid_k, heads, self.attention, opts, bsa, reports)
        # Conditioning split: cond queries see only cond keys; noise queries see everything.
        tc = plan.cond_frames
        cond = _core(
            q[:, :, :n_cond], k[:, :, :n_cond], v[:, :, :n_cond], (tc, h, w), (tc, h, w),
            heads, self.attention, opts, bsa, reports,
        )
        noise = _core(
            q[:, :, n_cond:], k, v, (t - tc, h, w), (t, h, w), heads, self.attention, opts, bsa, reports
        )
        return torch.cat([cond, noise], dim=1)


def rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, chunk: int,
              in_place: bool = False) -> torch.Tensor:
    """``apply_rope`` over slices of at most ``chunk`` tokens (0 = one call): its fp32
    temporaries (~6× a bf16 x) exist for one slice at a time; per-element, so the same result.
    in_place: write the result over x (a tensor nothing else reads)."""
    rows = x.shape[2]
    step = max(1, chunk // max(1, x.shape[0])) if chunk else rows
    if step >= rows and not in_place:
        return apply_rope(x, cos, sin)
    out = x if in_place else torch.empty_like(x)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        out[:, :, start:stop] = apply_rope(x[:, :, start:stop], cos[start:stop], sin[start:stop])
    return out


def _match(cached: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cached k/v on ``like``'s device and dtype, tiled to ``like``'s batch.

    The cache is built for the latent batch B; under CFG x is ``[uncond (B), cond (B)]``, so the
    cache repeats batch-wise (B = 1: the official ``.repeat`` to batch 2).
    """
    cached = cached.to(device=like.device, dtype=like.dtype, non_blocking=True)
    if cached.shape[0] != like.shape[0]:
        if like.shape[0] % cached.shape[0]:
            raise ValueError(f"kv_cache batch {cached.shape[0]} does not divide x batch {like.shape[0]}")
        reps = like.shape[0] // cached.shape[0]
        # expand (a view) when it can: torch.cat copies the cache into [cache; k] anyway.
        cached = cached.expand(like.shape[0], -1, -1, -1) if cached.shape[0] == 1 else cached.repeat(reps, 1, 1, 1)
    return cached


@dataclass
class TextInputs:
    """Embedded text for cross-attention. y ``[B, L, C]``; keep: None (every item attends to all
    L tokens) or, per item, a bool ``[L]`` of the tokens it attends to."""

    y: torch.Tensor
    keep: list | None = None


class CrossAttention(nn.Module):
    """Video → text attention, no RoPE. Keys ``q_linear``, ``kv_linear`` ([k | v]), ``q_norm``, ``k_norm``, ``proj``."""

    def __init__(self, dim: int, num_heads: int, attention, device=None, dtype=None, operations=nn,
                 block_kernels=TORCH_KERNELS):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention = attention
        self.block_kernels = block_kernels
        self.q_linear = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)
        self.kv_linear = operations.Linear(dim, 2 * dim, bias=True, device=device, dtype=dtype)
        self.q_norm = RMSNorm(self.head_dim, device=device, dtype=dtype)
        self.k_norm = RMSNorm(self.head_dim, device=device, dtype=dtype)
        self.proj = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def text_kv(self, text: TextInputs):
        """The text's normalised k and v, ``[B, heads, L, D]`` each (one per block and forward)."""
        b = text.y.shape[0]
        k, v = self.kv_linear(text.y).view(b, -1, 2, self.num_heads, self.head_dim).unbind(2)
        return self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, text: TextInputs, opts: dict, kv=None, items=slice(None)) -> torch.Tensor:
        """x ``[b, N, C]`` → ``[b, N, C]``; each item's queries attend to its own text tokens.

        kv: ``text_kv(text)`` when already computed; items: which batch items of ``text`` x
        holds (a slice of the forward's batch)."""
        b = x.shape[0]
        heads = self.num_heads
        q = self.block_kernels.head_norm(self.q_norm, self.q_linear(x), heads)
        k, v = self.text_kv(text) if kv is None else kv
        k, v = k[items], v[items]
        if text.keep is None:
            out = self.attention(q, k, v, heads, skip_reshape=True, transformer_options=opts)
        else:
            keep = text.keep[items]
            out = torch.cat([self._one(q[i:i + 1], k[i:i + 1], v[i:i + 1], keep[i], opts) for i in range(b)])
        return self.proj(out)

    def _one(self, q, k, v, keep: torch.Tensor, opts: dict) -> torch.Tensor:
        """One item over its kept text tokens (the official varlen call); no tokens → zero output."""
        if not bool(keep.any()):
            return q.new_zeros(1, q.shape[2], self.num_heads * self.head_dim)
        return self.attention(q, k[:, :, keep], v[:, :, keep], self.num_heads, skip_reshape=True,
                              transformer_options=opts)
