"""The LongCat-Video DiT: 48 single-stream blocks with per-frame adaLN, 3D RoPE and text cross-attention.

Math and state-dict names follow the official LongCat-Video DiT (docs/model.md); the constructor and
forward follow docs/ARCHITECTURE.md. Layers come from injected ``operations`` and the dense
attention function is injected too, so ComfyUI's casting, fp8, offload, attention backends and
block patches all apply. Imports nothing from ComfyUI.

Deliberate deviations from the official forward, each pinned by a test:
- The DiT computes in ``x``'s dtype; the official one casts ``x`` to its weight dtype, so fp8 or
  mixed-dtype weights run here in bf16 (tests/longcat/test_dit.py
  ``test_bf16_model_keeps_fp32_islands_and_returns_fp32``, ``test_fp8_weights_with_cast_ops_run``).
- Timesteps are always rounded to bf16, as the official bf16 model does, also for fp32 weights
  (``test_timesteps_rounded_to_bf16_regardless_of_weight_dtype``).
- The first ``num_cond_latents`` frames get t = 0 here; officially the pipelines pass that, so a
  scalar-timestep sampler (KSampler) can drive the conditioning split
  (tests/longcat/test_kv_cache.py ``test_cond_frames_get_t_zero``).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (
    CrossAttention,
    SelfAttention,
    SelfAttnPlan,
    TextInputs,
    sdpa_attention,
)
from .block_kernels import TORCH_KERNELS
from .guidance import round_timestep_bf16
from .layers import (
    NORM_EPS,
    CaptionEmbedder,
    FinalLayer,
    PatchEmbed3D,
    SwiGLU,
    TimestepEmbedder,
    linear_fp32,
)
from .memory import KVStreamer, per_frame_rows, pin, token_chunk
from .options import (
    BLOCK_INDEX_KEY,
    BSA_LOG_KEY,
    BSA_OPTIONS_KEY,
    CP_OPTIONS_KEY,
    PATCHES_REPLACE_KEY,
    SIGMAS_KEY,
)
from .rope import RopeCache


class LongCatBlock(nn.Module):
    """One block: adaLN-modulated self-attention, ungated cross-attention, adaLN-modulated SwiGLU.

    Keys: ``adaLN_modulation.1``, ``pre_crs_attn_norm``, ``attn.*``, ``cross_attn.*``, ``ffn.*``.
    """

    def __init__(self, dim, num_heads, mlp_ratio, t_dim, attention, device=None, dtype=None, operations=nn,
                 block_kernels=TORCH_KERNELS):
        super().__init__()
        self.block_kernels = block_kernels
        kw = {"device": device, "dtype": dtype}
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), operations.Linear(t_dim, 6 * dim, bias=True, **kw))
        self.mod_norm_attn = operations.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS, **kw)
        self.attn = SelfAttention(dim, num_heads, attention, operations=operations, block_kernels=block_kernels, **kw)
        self.pre_crs_attn_norm = operations.LayerNorm(dim, elementwise_affine=True, eps=NORM_EPS, **kw)
        self.cross_attn = CrossAttention(dim, num_heads, attention, operations=operations, block_kernels=block_kernels,
                                         **kw)
        self.mod_norm_ffn = operations.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS, **kw)
        self.ffn = SwiGLU(dim, mlp_ratio, operations=operations, block_kernels=block_kernels, **kw)

    def forward(self, x, t_emb, text, plan: SelfAttnPlan, opts: dict, cache=None, bsa=None):
        """x ``[B, N, C]`` (compute dtype), t_emb fp32 ``[B, T, t_dim]``, text TextInputs or None
        (skip cross-attention), bsa: this block's BSA settings or None (dense self-attention)
        → (x, pre-RoPE (k, v) or None, BSA reports of this block's sparse calls).

        Reads nothing per block from ``opts`` (the DiT decides ``bsa`` per block), so a compiled
        block serves all 48 with no recompile per block.
        """
        # adaLN in fp32, one modulation per latent frame, order (shift, scale, gate) × (msa, mlp).
        mod = linear_fp32(self.adaLN_modulation[1], F.silu(t_emb)).unsqueeze(2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)

        ops = self.block_kernels
        # Per-token work runs over slices of whole frames (memory.per_frame_rows): the norms'
        # outputs and the FFN's [N, 11008] halves exist for one slice at a time.
        def attn_input(xs, bs, fs):
            return ops.norm_modulate(self.mod_norm_attn, xs, shift_msa[bs, fs], scale_msa[bs, fs])

        def ffn_residual(xs, bs, fs):
            h = ops.norm_modulate(self.mod_norm_ffn, xs, shift_mlp[bs, fs], scale_mlp[bs, fs])
            return ops.gated_residual(xs, self.ffn(h), gate_mlp[bs, fs])

        attn, kv, reports = self.attn(x, plan, opts, cache, bsa, prenorm=attn_input)
        x = ops.gated_residual(x, attn, gate_msa)
        del attn

        if text is not None:
            text_kv = self.cross_attn.text_kv(text)

            def cross_residual(xs, bs, fs):
                h = ops.norm_affine(self.pre_crs_attn_norm, xs)
                return xs + self._cross(h, text, plan, opts, text_kv, bs, _frames(fs, plan.grid[0]))

            x = per_frame_rows(cross_residual, x, plan.grid[0], plan.token_chunk)

        return per_frame_rows(ffn_residual, x, shift_mlp.shape[1], plan.token_chunk), kv, reports

    def _cross(self, h, text, plan: SelfAttnPlan, opts, text_kv=None, items=slice(None), frames=None):
        """Cross-attention output of h (batch ``items``, latent frames ``frames`` = (first, end),
        default all); conditioning tokens (split path) get exactly zero. text_kv: the text's k, v
        when computed once per block (``CrossAttention.text_kv``)."""
        first, end = (0, plan.grid[0]) if frames is None else frames
        # Tokens per frame from h: a context-parallel shard holds part of every frame.
        n_cond = min(max(plan.cond_frames - first, 0), end - first) * (h.shape[1] // (end - first))
        if not n_cond:
            return self.cross_attn(h, text, opts, text_kv, items)
        if n_cond == h.shape[1]:
            return torch.zeros_like(h)
        noise = self.cross_attn(h[:, n_cond:], text, opts, text_kv, items)
        return torch.cat([noise.new_zeros(h.shape[0], n_cond, h.shape[2]), noise], dim=1)


class LongCatVideoDiT(nn.Module):
    """LongCat-Video DiT (13.58 B parameters, 1022 tensors at the published config).

    ``attention``: dense attention callable (ComfyUI ``optimized_attention`` signature), default
    ``sdpa_attention``. ``operations``: namespace with ``Linear``, ``Conv3d``, ``LayerNorm``
    (default ``torch.nn``). ``block_kernels``: the blocks' elementwise kernels
    (``block_kernels.TORCH_KERNELS``, the default, or ``FUSED_KERNELS``; the loaders pick them
    per device with ``block_kernels.choose_block_kernels``). ``device``/``dtype``: where and how
    parameters are created (``device="meta"`` for a free skeleton to load into with ``assign=True``).
    """

    def __init__(self, in_channels=16, out_channels=16, hidden_size=4096, depth=48, num_heads=32,
                 caption_channels=4096, mlp_ratio=4, adaln_tembed_dim=512, frequency_embedding_size=256,
                 patch_size=(1, 2, 2), text_tokens_zero_pad=True, attention=None, device=None, dtype=None,
                 operations=None, block_kernels=None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if int(patch_size[0]) != 1:
            raise ValueError(f"patch_size must be (1, ph, pw) (per-frame modulation), got {tuple(patch_size)}")
        operations = nn if operations is None else operations
        attention = sdpa_attention if attention is None else attention
        self.block_kernels = TORCH_KERNELS if block_kernels is None else block_kernels
        kw = {"device": device, "dtype": dtype, "operations": operations}
        block_kw = {**kw, "block_kernels": self.block_kernels}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_size, self.num_heads, self.depth = hidden_size, num_heads, depth
        self.head_dim = hidden_size // num_heads
        self.patch_size = tuple(int(p) for p in patch_size)
        self.text_tokens_zero_pad = text_tokens_zero_pad
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size, **kw)
        self.t_embedder = TimestepEmbedder(adaln_tembed_dim, frequency_embedding_size, **kw)
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, **kw)
        self.blocks = nn.ModuleList(
            LongCatBlock(hidden_size, num_heads, mlp_ratio, adaln_tembed_dim, attention, **block_kw)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, adaln_tembed_dim, math.prod(self.patch_size) * out_channels,
                                      **block_kw)
        self.rope = RopeCache()

    def forward(self, x, timestep, context, context_mask=None, num_cond_latents=0, kv_cache=None,
                return_kv=False, skip_cross_attn=False, transformer_options=None, offload_kv_cache=False):
        """Predict the official velocity (v ≈ x0 − ε).

        x: ``[B, C_in, T, H, W]`` normalized latents in the compute dtype (bf16 for parity).
        timestep: ``[B]``, ``[B, T]`` (or ``[B, Tc + T]`` with a cache) on the 0..1000 scale; rounded
        to bf16 here. The first ``num_cond_latents`` frames always use t = 0 (split path).
        context: ``[B, L, caption_channels]`` (or ``[B, 1, L, C]``); None only with skip_cross_attn.
        context_mask: ``[B, L]`` (1 = real token) or None. num_cond_latents: leading clean frames
        of x (split path), or with ``kv_cache`` the number of cached frames Tc (x = noise frames only).
        kv_cache: ``{block: (k, v)}`` pre-RoPE ``[1 or B, heads, Tc·H/2·W/2, D]`` on any device.
        return_kv: also return such a cache for the conditioning frames (all of x if
        num_cond_latents = 0), on the CPU when ``offload_kv_cache``.
        Returns fp32 ``[B, C_out, T, H, W]`` for the frames of x, or ``(out, kv_cache)``.
        """
        opts = dict(transformer_options or {})
        b, _, t, h, w = self._check_input(x, num_cond_latents, kv_cache)
        cached = num_cond_latents if kv_cache is not None else 0
        cond = 0 if kv_cache is not None else num_cond_latents
        t_emb = self.t_embedder(self._frame_timesteps(timestep, b, t, cond, cached, x.device))
        text = None if skip_cross_attn else self._embed_text(context, context_mask, b, x.dtype)
        grid = (t // self.patch_size[0], h // self.patch_size[1], w // self.patch_size[2])
        cp = opts.get(CP_OPTIONS_KEY)  # parallel/exchange.py: this rank's token shard only
        if cp is not None:
            cp.check(self.num_heads, grid, kv_cache)
        plan = SelfAttnPlan(
            grid=grid, cond_frames=cond, cached_frames=cached, return_kv=return_kv, sigma=window_sigma(opts),
            rope=self.rope.get((cached + grid[0], grid[1], grid[2]), self.head_dim, x.device),
            context_parallel=cp, token_chunk=token_chunk(opts),
        )
        tokens = self.x_embedder(x)
        if cp is not None:
            tokens = cp.shard(tokens, grid)
        tokens, new_cache = self._run_blocks(tokens, t_emb, text, plan, opts, kv_cache, offload_kv_cache)
        tokens = self.final_layer(tokens, t_emb)
        if cp is not None:
            tokens = cp.gather(tokens, grid)
        out = self.unpatchify(tokens, grid).float()
        return (out, new_cache) if return_kv else out

    def build_kv_cache(self, cond_latents, transformer_options=None, offload=False):
        """The continuation KV cache: run the conditioning latents ``[B, C_in, Tc, H, W]`` alone at
        t = 0 without cross-attention (as the official pipeline does) → ``{block: (k, v)}``."""
        zeros = torch.zeros(cond_latents.shape[0], device=cond_latents.device)
        _, cache = self.forward(cond_latents, zeros, None, return_kv=True, skip_cross_attn=True,
                                transformer_options=transformer_options, offload_kv_cache=offload)
        return cache

    def _run_blocks(self, x, t_emb, text, plan, opts, kv_cache, offload):
        """The block loop; honours ``patches_replace["dit"][("double_block", i)]`` like ComfyUI's Wan.

        Per-block decisions (BSA or dense, the BSA log) are taken here, outside the blocks, so a
        compiled block sees the same inputs in every block."""
        replace = opts.get(PATCHES_REPLACE_KEY, {}).get("dit", {})
        settings, log = opts.get(BSA_OPTIONS_KEY), opts.get(BSA_LOG_KEY)
        new_cache = {} if plan.return_kv else None
        # An offloaded cache streams in one block ahead of the block that reads it.
        streamer = None if kv_cache is None else KVStreamer(kv_cache, x.device)
        for i, block in enumerate(self.blocks):
            opts[BLOCK_INDEX_KEY] = i
            cache = None if streamer is None else streamer.get(i)
            bsa = _block_bsa(settings, i, plan)
            kv_slot, reports = [], []

            def original_block(args, block=block, cache=cache, bsa=bsa, kv_slot=kv_slot, reports=reports):
                out, kv, block_reports = block(args["img"], args["vec"], args["txt"], plan,
                                               args["transformer_options"], cache, bsa)
                kv_slot.append(kv)
                reports.extend(block_reports)
                return {"img": out}

            args = {"img": x, "txt": text, "vec": t_emb, "pe": plan.rope, "transformer_options": opts}
            if ("double_block", i) in replace:
                x = replace[("double_block", i)](args, {"original_block": original_block})["img"]
            else:
                x = original_block(args)["img"]
            if log is not None:
                for report in reports:
                    log.record(i, report)
            if new_cache is not None:
                if not kv_slot:
                    raise RuntimeError(f"block {i} patch did not call original_block; return_kv needs it")
                k, v = kv_slot[-1]
                # k, v may be views into this call's full k, v: copy them (to the CPU, or
                # contiguous on the device) so the cache does not keep the full tensors alive.
                new_cache[i] = (pin(k), pin(v)) if offload else (k.contiguous(), v.contiguous())
        return x, new_cache

    def _check_input(self, x, num_cond_latents, kv_cache):
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(f"x frames/height/width {t}x{h}x{w} must be divisible by patch_size {self.patch_size}")
        if kv_cache is None and not 0 <= num_cond_latents < t:
            raise ValueError(f"num_cond_latents must be in [0, T={t}), got {num_cond_latents}")
        if kv_cache is not None:
            if num_cond_latents < 1:
                raise ValueError(f"num_cond_latents must be the cached frame count (>= 1), got {num_cond_latents}")
            if sorted(kv_cache) != list(range(self.depth)):
                raise ValueError(f"kv_cache must have an entry for each of the {self.depth} blocks")
            expected = num_cond_latents // pt * (h // ph) * (w // pw)
            if kv_cache[0][0].shape[2] != expected:
                raise ValueError(f"kv_cache holds {kv_cache[0][0].shape[2]} tokens, expected {expected} "
                                 f"for num_cond_latents={num_cond_latents} at {h}x{w}")
        return b, self.in_channels, t, h, w

    def _frame_timesteps(self, timestep, b, t, cond, cached, device):
        """Per-frame timesteps fp32 ``[B, T]``, bf16-rounded as the official bf16 model does (1.4)."""
        ts = torch.as_tensor(timestep, device=device).float()
        if ts.ndim <= 1:
            ts = ts.reshape(-1, 1).expand(b, t) if ts.numel() in (1, b) else None
        elif ts.shape[1] == cached + t and cached:
            ts = ts[:, cached:]
        if ts is None or tuple(ts.shape) not in ((b, t), (1, t)):
            raise ValueError(f"timestep must be [B], [B, T] or [B, Tc+T] for B={b}, T={t}, "
                             f"got {tuple(torch.as_tensor(timestep).shape)}")
        ts = ts.expand(b, t).clone()
        ts[:, :cond] = 0.0  # clean conditioning frames are always at t = 0
        return round_timestep_bf16(ts)

    def _embed_text(self, context, mask, b, dtype) -> TextInputs:
        """Caption MLP on all L positions; ``text_tokens_zero_pad`` zeroes pads after it (1.5)."""
        if context is None:
            raise ValueError("context is required unless skip_cross_attn=True")
        if context.ndim == 4:
            context = context.squeeze(1)
        if context.ndim != 3 or context.shape[0] not in (1, b):
            raise ValueError(f"context must be [B, L, C] with B={b}, got {tuple(context.shape)}")
        y = self.y_embedder(context.to(dtype)).expand(b, -1, -1)
        if mask is None:
            return TextInputs(y)
        mask = mask.reshape(mask.shape[0], -1).to(y.device).expand(b, -1)
        if mask.shape[1] != y.shape[1]:
            raise ValueError(f"context_mask length {mask.shape[1]} does not match context length {y.shape[1]}")
        if self.text_tokens_zero_pad:
            return TextInputs(y * mask[..., None].to(y.dtype))
        return TextInputs(y, keep=[row.bool() for row in mask])

    def unpatchify(self, tokens, grid):
        """fp32 ``[B, N, pt·ph·pw·C_out]`` (features (pt, ph, pw, c), c fastest) → ``[B, C_out, T, H, W]``."""
        b = tokens.shape[0]
        nt, nh, nw = grid
        pt, ph, pw = self.patch_size
        x = tokens.view(b, nt, nh, nw, pt, ph, pw, self.out_channels)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.out_channels, nt * pt, nh * ph, nw * pw)


def _frames(fs: slice, frames: int) -> tuple[int, int]:
    """(first, end) latent frames of a ``memory.frame_slices`` frame slice."""
    return fs.start or 0, frames if fs.stop is None else fs.stop


def _block_bsa(settings, block_index: int, plan: SelfAttnPlan):
    """The BSA settings for block ``block_index`` of this forward, or None for dense self-attention
    (no settings, one-frame grids, a dense block, or a sigma outside the step window)."""
    if settings is None or plan.grid[0] <= 1:
        return None
    return settings if settings.applies(block_index, plan.sigma) else None


def window_sigma(opts: dict) -> float | None:
    """The current sigma from ``transformer_options["sigmas"]`` (first element), or None.

    Read only for a BSA step window: reading a device tensor is a host sync (and a graph break
    under torch.compile) that dense runs and unwindowed BSA do not need."""
    settings = opts.get(BSA_OPTIONS_KEY)
    sigmas = opts.get(SIGMAS_KEY)
    if sigmas is None or settings is None or not settings.has_step_window:
        return None
    return float(torch.as_tensor(sigmas).flatten()[0])
