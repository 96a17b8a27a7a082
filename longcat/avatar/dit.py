"""The LongCat-Video-Avatar DiT: the base LongCat DiT plus audio.

Built on the base modules (``longcat/dit.py``, ``attention.py``, ``layers.py``, ``rope.py``): the
blocks, self-attention and DiT subclass the base classes and add, per block, an audio
cross-attention branch with its own 3-way adaLN (noise frames only), an audio projector
(5-frame audio windows → 32 tokens per latent frame and speaker), a reference latent with its
own RoPE time position and a "mask range" of noise frames that do not see it, and the
multi-speaker routing (a reference attention map picks each token's speaker for a 1-D RoPE in
the audio attention). Math and state-dict names follow the official Avatar DiT (docs/avatar.md);
1608 tensors at the published size. Imports nothing from ComfyUI.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import SelfAttention, SelfAttnPlan, _core, sdpa_attention
from ..dit import LongCatBlock, LongCatVideoDiT, window_sigma
from ..block_kernels import TORCH_KERNELS
from ..layers import NORM_EPS, RMSNorm, linear_fp32
from ..options import CP_OPTIONS_KEY
from ..rope import apply_rope, axis_angles
from .embeds import AUDIO_WINDOW

VAE_TIME_SCALE = 4  # video frames per latent frame after the first
MAP_QUERY_CHUNK = 8192  # reference-map queries per chunk (bounds its [heads, q, H·W] softmax)


@dataclass
class AvatarPlan(SelfAttnPlan):
    """The base plan plus what the Avatar blocks share in one forward.

    ref_frames: 1 when frame 0 (of the cache, or of x) is the reference latent, else 0.
    ref_skip: ``(start, end)`` noise frames whose queries do not see the reference, or None.
    audio: audio tokens ``[B, T_x, M, C_a]`` aligned with the frames of x, or None (no cross-attention).
    token_masks: ``[K, H·W]`` speaker masks on the token grid (multi-speaker), or None.
    streams: audio streams (speakers) of a multi-speaker call.
    """

    ref_frames: int = 0
    ref_skip: tuple[int, int] | None = None
    audio: torch.Tensor | None = None
    token_masks: torch.Tensor | None = None
    streams: int = 1
    class_range: int = 24
    class_interval: int = 4


class AudioProjector(nn.Module):
    """5-frame audio windows → context tokens (the MultiTalk projector). Keys ``proj1``,
    ``proj1_vf``, ``proj2``, ``proj3``, ``norm`` (LayerNorm, eps 1e-5)."""

    def __init__(self, layers, channels, intermediate_dim, output_dim, context_tokens, window=AUDIO_WINDOW,
                 vae_scale=VAE_TIME_SCALE, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.window, self.vae_scale = window, vae_scale
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = operations.Linear(window * layers * channels, intermediate_dim, **kw)
        self.proj1_vf = operations.Linear((window + vae_scale - 1) * layers * channels, intermediate_dim, **kw)
        self.proj2 = operations.Linear(intermediate_dim, intermediate_dim, **kw)
        self.proj3 = operations.Linear(intermediate_dim, context_tokens * output_dim, **kw)
        self.norm = operations.LayerNorm(output_dim, **kw)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows ``[A, F, 5, L, C]`` (F = 1 + 4k video frames) → ``[A, 1 + k, tokens, output_dim]``.

        Latent frame 0 takes video frame 0's whole window; latent frame j ≥ 1 covers video frames
        4j−3..4j and takes the first one's left half and centre, the middle ones' centres and the
        last one's centre and right half (window + 3 audio frames)."""
        f = windows.shape[1]
        if (f - 1) % self.vae_scale:
            raise ValueError(f"audio windows must cover 1 + {self.vae_scale}k video frames, got {f}")
        mid = self.window // 2
        later = windows[:, 1:].unflatten(1, (-1, self.vae_scale))  # [A, k, 4, 5, L, C]
        later = torch.cat([later[:, :, 0, :mid + 1], later[:, :, 1:-1, mid], later[:, :, -1, mid:]], dim=2)
        first = F.relu(self.proj1(windows[:, 0].flatten(1)))[:, None]
        rest = F.relu(self.proj1_vf(later.flatten(2)))
        h = F.relu(self.proj2(torch.cat([first, rest], dim=1)))
        tokens = self.proj3(h).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)


def reference_attention_map(q: torch.Tensor, k_ref: torch.Tensor, token_masks: torch.Tensor,
                            groups: int = 2) -> torch.Tensor:
    """How much each query attends to each speaker region of the reference frame.

    q ``[1, heads, S, D]`` (post-RoPE noise queries), k_ref ``[1, heads, H·W, D]`` (post-RoPE keys
    of frame 0), token_masks ``[K, H·W]`` (0/1) → ``[K, S]``: per head, the softmax mass inside a
    mask divided by the mask's area, averaged over the heads of each of ``groups`` head groups,
    then over the groups. Computed in q's dtype, chunked over queries (exact: each query is
    independent) so the ``[heads, S, H·W]`` probabilities never exist at once.
    """
    heads = q.shape[1]
    per_group = heads // groups
    scale = q.shape[-1] ** -0.5
    masks = token_masks.to(q.dtype)
    area = masks.sum(-1)
    out = q.new_zeros(masks.shape[0], q.shape[2])
    for g in range(groups):
        qg = q[0, g * per_group:(g + 1) * per_group] * scale
        kg = k_ref[0, g * per_group:(g + 1) * per_group].to(q.dtype)
        for s in range(0, qg.shape[1], MAP_QUERY_CHUNK):
            probs = (qg[:, s:s + MAP_QUERY_CHUNK] @ kg.transpose(-1, -2)).softmax(-1)  # [h, s, HW]
            mass = probs @ masks.T / area  # [h, s, K]
            out[:, s:s + MAP_QUERY_CHUNK] += mass.mean(0).T
    return out / groups


def speaker_positions(ref_map: torch.Tensor, class_range: int, class_interval: int) -> torch.Tensor:
    """1-D RoPE positions of the queries ``[S]`` from ``reference_attention_map`` ``[K, S]``.

    Speaker 1's map is min-max scaled into ``[0, interval]``, speaker 2's into
    ``[range − interval, range]``; a token takes its argmax class's value, classes past 2
    (others) counting as background, which sits at range/2 (K ≤ 3) or 100."""
    lo, hi = ref_map.min(1).values, ref_map.max(1).values
    first = (ref_map[0] - lo[0]) / (hi[0] - lo[0] + 1e-8) * class_interval
    second = (ref_map[1] - lo[1]) / (hi[1] - lo[1] + 1e-8) * class_interval + (class_range - class_interval)
    background = torch.full_like(first, _background_position(ref_map.shape[0], class_range))
    choice = ref_map.argmax(0).clamp(max=2)
    return torch.stack([first, second, background], dim=1)[torch.arange(ref_map.shape[1], device=choice.device), choice]


def _background_position(classes: int, class_range: int) -> int:
    return class_range // 2 if classes <= 3 else 100


def stream_positions(tokens: int, streams: int, classes: int, class_range: int, class_interval: int) -> torch.Tensor:
    """1-D RoPE positions ``[tokens]`` of one frame's audio tokens: speaker 1's tokens at the
    centre of its bucket, speaker 2's at the centre of its own, a third (silent) stream at the
    background position."""
    pos = torch.empty(tokens)
    per = tokens // streams if streams > 2 else tokens // 2
    pos[:per] = class_interval / 2
    pos[per:] = class_range - class_interval / 2
    if streams > 2:
        pos[2 * per:] = _background_position(classes, class_range)
    return pos


def rope_1d(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """1-D RoPE over the whole head dim at (fractional) ``positions`` ``[S]`` of x ``[..., S, D]``."""
    angles = axis_angles(positions.float(), x.shape[-1])
    return apply_rope(x, angles.cos(), angles.sin())


class AvatarSelfAttention(SelfAttention):
    """Base self-attention plus the reference latent (attends to itself only; the condition
    frames do not see it; noise frames in the plan's ``ref_skip`` range skip it) and the
    reference attention map of multi-speaker calls."""

    def forward(self, x, plan: AvatarPlan, opts: dict, cache=None, bsa=None):
        """→ (out, (k, v) or None, BSA reports, the ``[K, S_noise]`` reference map or None)."""
        q, k, v, kv_out = self._roped_qkv(x, plan, cache)
        n_cond = plan.cond_frames * plan.grid[1] * plan.grid[2]
        reports = []
        out = self._attend(q, k, v, plan, opts, n_cond, bsa, reports)
        ref_map = None
        if plan.token_masks is not None:
            hw = plan.grid[1] * plan.grid[2]
            ref_map = reference_attention_map(q[:, :, n_cond:], k[:, :, :hw], plan.token_masks)
        return self.proj(out), kv_out, reports, ref_map

    def _attend(self, q, k, v, plan: AvatarPlan, opts: dict, n_cond: int, bsa, reports):
        if not plan.ref_frames:
            return super()._attend(q, k, v, plan, opts, n_cond, bsa, reports)
        _, h, w = plan.grid
        hw = h * w

        def core(q_, k_, v_):
            return _core(q_, k_, v_, (q_.shape[2] // hw, h, w), (k_.shape[2] // hw, h, w), q.shape[1],
                         self.attention, opts, bsa, reports)

        if plan.cached_frames:  # x holds noise frames only; the cache starts with the reference
            return self._noise(q, k, v, plan, core, hw)
        # [ref | cond | noise]: the reference and the condition frames each attend only to themselves.
        parts = [core(q[:, :, :hw], k[:, :, :hw], v[:, :, :hw]),
                 core(q[:, :, hw:n_cond], k[:, :, hw:n_cond], v[:, :, hw:n_cond])]
        if n_cond < q.shape[2]:
            parts.append(self._noise(q[:, :, n_cond:], k, v, plan, core, hw))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _noise(q, k, v, plan: AvatarPlan, core, hw):
        """Noise queries over every key, except those in ``plan.ref_skip``: every key but the reference."""
        if plan.ref_skip is None:
            return core(q, k, v)
        start, end = plan.ref_skip[0] * hw, plan.ref_skip[1] * hw
        parts = [core(q[:, :, :start], k, v)] if start else []
        parts.append(core(q[:, :, start:end], k[:, :, hw:], v[:, :, hw:]))
        if end < q.shape[2]:
            parts.append(core(q[:, :, end:], k, v))
        return torch.cat(parts, dim=1)


class AudioCrossAttention(nn.Module):
    """Per-frame video → audio-token attention. Keys ``q_linear``, ``kv_linear`` ([k | v]),
    ``q_norm``, ``k_norm``, ``proj``; no RoPE except the multi-speaker 1-D RoPE."""

    def __init__(self, dim, audio_dim, num_heads, attention, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attention = attention
        self.q_linear = operations.Linear(dim, dim, bias=True, **kw)
        self.q_norm = RMSNorm(self.head_dim, **kw)
        self.kv_linear = operations.Linear(audio_dim, 2 * dim, bias=True, **kw)
        self.k_norm = RMSNorm(self.head_dim, **kw)
        self.proj = operations.Linear(dim, dim, bias=True, **kw)

    def forward(self, x, tokens, frames: int, opts: dict, q_positions=None, k_positions=None):
        """x ``[B, frames·S, C]``, tokens ``[B·frames, M, C_a]`` (each frame's own) → ``[B, frames·S, C]``.

        q_positions ``[frames·S]`` / k_positions ``[M]``: multi-speaker 1-D RoPE positions, or None."""
        b, n, c = x.shape
        heads, d = self.num_heads, self.head_dim
        q = self.q_norm(self.q_linear(x).view(b * frames, n // frames, heads, d)).transpose(1, 2)
        k, v = self.kv_linear(tokens).view(tokens.shape[0], tokens.shape[1], 2, heads, d).unbind(2)
        k, v = self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        if q_positions is not None:  # positions [frames·S] → per-frame tables [B·frames, 1, S, D]
            angles = axis_angles(q_positions, d).view(frames, 1, n // frames, d).repeat(b, 1, 1, 1)
            q = apply_rope(q, angles.cos(), angles.sin())
            k = rope_1d(k, k_positions.to(k.device))
        out = self.attention(q, k, v, heads, skip_reshape=True, transformer_options=opts)
        return self.proj(out).reshape(b, n, c)


class AvatarBlock(LongCatBlock):
    """A base block plus the audio branch after the text cross-attention.

    Extra keys: ``audio_adaLN_modulation.1`` (shift, scale, gate), ``pre_video_crs_attn_norm``,
    ``pre_audio_crs_attn_norm`` (only with ``audio_prenorm``), ``audio_cross_attn.*``.
    """

    def __init__(self, dim, num_heads, mlp_ratio, t_dim, attention, audio_dim, audio_prenorm,
                 device=None, dtype=None, operations=nn, block_kernels=TORCH_KERNELS):
        super().__init__(dim, num_heads, mlp_ratio, t_dim, attention, device=device, dtype=dtype,
                         operations=operations, block_kernels=block_kernels)
        kw = {"device": device, "dtype": dtype}
        self.attn = AvatarSelfAttention(dim, num_heads, attention, operations=operations,
                                        block_kernels=block_kernels, **kw)
        self.audio_adaLN_modulation = nn.Sequential(nn.SiLU(), operations.Linear(t_dim, 3 * dim, bias=True, **kw))
        self.pre_video_crs_attn_norm = operations.LayerNorm(dim, elementwise_affine=True, eps=NORM_EPS, **kw)
        self.pre_audio_crs_attn_norm = (
            operations.LayerNorm(audio_dim, elementwise_affine=True, eps=NORM_EPS, **kw) if audio_prenorm else None
        )
        self.audio_cross_attn = AudioCrossAttention(dim, audio_dim, num_heads, attention, operations=operations, **kw)

    def forward(self, x, t_emb, text, plan: AvatarPlan, opts: dict, cache=None, bsa=None):
        mod = linear_fp32(self.adaLN_modulation[1], F.silu(t_emb)).unsqueeze(2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)

        ops = self.block_kernels
        attn, kv, reports, ref_map = self.attn(ops.norm_modulate(self.mod_norm_attn, x, shift_msa, scale_msa),
                                               plan, opts, cache, bsa)
        x = ops.gated_residual(x, attn, gate_msa)

        if text is not None:
            x = x + self._cross(ops.norm_affine(self.pre_crs_attn_norm, x), text, plan, opts)
            x = self._audio(x, t_emb, plan, opts, ref_map)

        ffn = self.ffn(ops.norm_modulate(self.mod_norm_ffn, x, shift_mlp, scale_mlp))
        return ops.gated_residual(x, ffn, gate_mlp), kv, reports

    def _audio(self, x, t_emb, plan: AvatarPlan, opts, ref_map):
        """x plus the gated, adaLN-modulated audio attention on the noise frames (condition
        frames unchanged); the audio adaLN sees the noise frames' timesteps only."""
        frames = plan.grid[0] - plan.cond_frames
        n_cond = plan.cond_frames * (x.shape[1] // plan.grid[0])
        mod = linear_fp32(self.audio_adaLN_modulation[1], F.silu(t_emb[:, plan.cond_frames:])).unsqueeze(2)
        shift, scale, gate = mod.chunk(3, dim=-1)
        ops = self.block_kernels
        tokens = plan.audio[:, plan.cond_frames:].flatten(0, 1)
        if self.pre_audio_crs_attn_norm is not None:
            tokens = ops.norm_affine(self.pre_audio_crs_attn_norm, tokens)
        q_pos = k_pos = None
        if ref_map is not None:
            q_pos = speaker_positions(ref_map, plan.class_range, plan.class_interval)
            k_pos = stream_positions(tokens.shape[1], plan.streams, ref_map.shape[0], plan.class_range,
                                     plan.class_interval)
        noise = x[:, n_cond:]
        out = self.audio_cross_attn(ops.norm_affine(self.pre_video_crs_attn_norm, noise), tokens, frames, opts,
                                    q_pos, k_pos)
        noise = ops.gated_residual(noise, ops.norm_modulate(self.mod_norm_attn, out, shift, scale), gate)
        return torch.cat([x[:, :n_cond], noise], dim=1) if n_cond else noise


class LongCatAvatarDiT(LongCatVideoDiT):
    """LongCat-Video-Avatar DiT (1.0: 12×768 wav2vec2 features, 1.5: 5×1280 Whisper features).

    Constructor: the base arguments plus ``audio_block`` (L), ``audio_channel`` (C),
    ``intermediate_dim``, ``output_dim``, ``context_tokens``, ``audio_prenorm``, ``class_range``,
    ``class_interval`` (the official config names). Forward: docs/avatar.md.
    """

    def __init__(self, in_channels=16, out_channels=16, hidden_size=4096, depth=48, num_heads=32,
                 caption_channels=4096, mlp_ratio=4, adaln_tembed_dim=512, frequency_embedding_size=256,
                 patch_size=(1, 2, 2), text_tokens_zero_pad=True, audio_block=5, audio_channel=1280,
                 intermediate_dim=512, output_dim=768, context_tokens=32, audio_prenorm=False, class_range=24,
                 class_interval=4, attention=None, device=None, dtype=None, operations=None, block_kernels=None):
        super().__init__(in_channels, out_channels, hidden_size, 0, num_heads, caption_channels, mlp_ratio,
                         adaln_tembed_dim, frequency_embedding_size, patch_size, text_tokens_zero_pad, attention,
                         device, dtype, operations, block_kernels)
        operations = nn if operations is None else operations
        attention = sdpa_attention if attention is None else attention
        kw = {"device": device, "dtype": dtype, "operations": operations}
        block_kw = {**kw, "block_kernels": self.block_kernels}
        self.depth = depth
        self.blocks = nn.ModuleList(
            AvatarBlock(hidden_size, num_heads, mlp_ratio, adaln_tembed_dim, attention, output_dim, audio_prenorm,
                        **block_kw)
            for _ in range(depth)
        )
        self.audio_proj = AudioProjector(audio_block, audio_channel, intermediate_dim, output_dim, context_tokens, **kw)
        self.audio_layers, self.audio_channels = audio_block, audio_channel
        self.class_range, self.class_interval = class_range, class_interval

    def forward(self, x, timestep, context, context_mask=None, num_cond_latents=0, kv_cache=None,
                return_kv=False, skip_cross_attn=False, transformer_options=None, offload_kv_cache=False,
                audio=None, ref_frames=0, ref_index=None, mask_frame_range=0, speaker_masks=None):
        """Predict the official velocity (v ≈ x0 − ε), as the base forward, plus:

        audio: windows ``[A, F, 5, L, C]`` of the clip's F = 1 + 4k video frames (A = 1 or B for one
        speaker, the number of streams for several); required unless ``skip_cross_attn``. Zero
        windows are the "no audio" input of guidance.
        ref_frames: 1 when frame 0 (of x, or of the cache) is the reference latent (continuation;
        ``num_cond_latents`` counts it), else 0. ref_index: the reference's RoPE time position.
        mask_frame_range: noise frames within this many frames of ``ref_index`` skip the reference.
        speaker_masks: ``[K, H_px, W_px]`` (speaker 1, speaker 2, background, others...) for
        several speakers (batch 1, with condition frames), else None.
        """
        opts = dict(transformer_options or {})
        if opts.get(CP_OPTIONS_KEY) is not None:
            raise ValueError("context parallel (LongCat Multi-GPU) does not support the Avatar model yet")
        b, _, t, h, w = self._check_avatar_input(x, num_cond_latents, kv_cache, return_kv, ref_frames, ref_index)
        cached = num_cond_latents if kv_cache is not None else 0
        cond = 0 if kv_cache is not None else num_cond_latents
        t_emb = self.t_embedder(self._frame_timesteps(timestep, b, t, cond, cached, x.device))
        text = None if skip_cross_attn else self._embed_text(context, context_mask, b, x.dtype)
        grid = (t, h // self.patch_size[1], w // self.patch_size[2])
        multi = speaker_masks is not None
        plan = AvatarPlan(
            grid=grid, cond_frames=cond, cached_frames=cached, return_kv=return_kv,
            sigma=window_sigma(opts), ref_frames=ref_frames,
            rope=self.rope.get((cached + t, grid[1], grid[2]), self.head_dim, x.device,
                               float(ref_index) if ref_frames else None),
            ref_skip=self._ref_skip(ref_frames, ref_index, mask_frame_range, num_cond_latents, t - cond),
            class_range=self.class_range, class_interval=self.class_interval,
        )
        if not skip_cross_attn:
            plan.audio = self._audio_tokens(audio, b, t, ref_frames, multi, x)
            if multi:
                if b != 1 or num_cond_latents < 1:
                    raise ValueError("several speakers need batch 1 and condition frames (image or continuation)")
                plan.streams = audio.shape[0]
                plan.token_masks = self._token_masks(speaker_masks, grid, plan.streams, x.dtype)
        tokens = self.x_embedder(x)
        tokens, new_cache = self._run_blocks(tokens, t_emb, text, plan, opts, kv_cache, offload_kv_cache)
        out = self.unpatchify(self.final_layer(tokens, t_emb), grid).float()
        return (out, new_cache) if return_kv else out

    def build_kv_cache(self, cond_latents, transformer_options=None, offload=False, ref_frames=0, ref_index=None):
        """The continuation KV cache of ``[ref?, cond...]`` latents ``[B, C_in, Tc, H, W]``: run at
        t = 0 without cross-attention, the reference and the condition frames each attending to
        themselves (the official cache pass) → ``{block: (k, v)}``."""
        zeros = torch.zeros(cond_latents.shape[0], device=cond_latents.device)
        _, cache = self.forward(cond_latents, zeros, None, num_cond_latents=cond_latents.shape[2] if ref_frames else 0,
                                return_kv=True, skip_cross_attn=True, transformer_options=transformer_options,
                                offload_kv_cache=offload, ref_frames=ref_frames, ref_index=ref_index)
        return cache

    def _check_avatar_input(self, x, num_cond_latents, kv_cache, return_kv, ref_frames, ref_index):
        if ref_frames not in (0, 1):
            raise ValueError(f"ref_frames must be 0 or 1 (one reference latent), got {ref_frames}")
        if ref_frames and ref_index is None:
            raise ValueError("ref_index (the reference latent's RoPE time position) is required with ref_frames=1")
        if ref_frames and num_cond_latents < 2:
            raise ValueError(f"a reference latent needs condition frames after it: num_cond_latents >= 2 "
                             f"(reference included), got {num_cond_latents}")
        # The cache pass runs [ref | cond] with every frame a condition frame.
        cache_pass = kv_cache is None and return_kv and ref_frames and num_cond_latents == x.shape[2]
        self._check_input(x, 0 if cache_pass else num_cond_latents, kv_cache)
        return x.shape

    @staticmethod
    def _ref_skip(ref_frames, ref_index, mask_frame_range, cond_frames, noise_frames):
        """Noise frames ``[start, end)`` around the reference's RoPE position, when they all exist."""
        if not ref_frames or not mask_frame_range or mask_frame_range <= 0:
            return None
        start = ref_index - mask_frame_range - cond_frames + 1
        end = ref_index + mask_frame_range - cond_frames + 2
        return (start, end) if 0 <= start < end <= noise_frames else None

    def _audio_tokens(self, audio, b, t, ref_frames, multi, x):
        """Audio windows → tokens ``[B, T, M, C_a]`` aligned with the frames of x (the reference
        gets latent 0's tokens; the last T latent frames are kept)."""
        if audio is None:
            raise ValueError("the Avatar DiT needs audio windows (zeros for the no-audio pass): sample it with "
                             "LongCat Avatar Sampler, not a stock sampler")
        want = (AUDIO_WINDOW, self.audio_layers, self.audio_channels)
        if audio.ndim != 5 or tuple(audio.shape[2:]) != want:
            raise ValueError(f"audio must be [A, F, {want[0]}, {want[1]}, {want[2]}] for this Avatar model, "
                             f"got {tuple(audio.shape)} (audio embeds of the other Avatar version?)")
        if not multi and audio.shape[0] not in (1, b):
            raise ValueError(f"audio batch {audio.shape[0]} must be 1 or the latent batch {b} for one speaker")
        tokens = self.audio_proj(audio.to(device=x.device, dtype=x.dtype))
        if ref_frames:
            tokens = torch.cat([tokens[:, :1], tokens], dim=1)
        if tokens.shape[1] < t:
            raise ValueError(f"audio covers {tokens.shape[1]} latent frames, the latents need {t}: pass the windows "
                             f"of all {1 + VAE_TIME_SCALE * (t - ref_frames - 1)} video frames of the clip")
        tokens = tokens[:, -t:]
        if multi:  # speakers side by side in each frame's token list, batch 1
            return tokens.permute(1, 0, 2, 3).flatten(1, 2)[None]
        return tokens.expand(b, -1, -1, -1)

    @staticmethod
    def _token_masks(masks, grid, streams, dtype):
        k = masks.shape[0]
        if masks.ndim != 3 or streams not in (2, 3) or k < 3 or (streams == 3) != (k > 3):
            raise ValueError(f"speaker_masks must be [K, H, W] with K = 3 for 2 audio streams or K >= 4 for 3 "
                             f"(speaker 1, speaker 2, background, others), got {tuple(masks.shape)} for {streams}")
        tokens = F.interpolate(masks[None].float(), size=grid[1:], mode="nearest")[0] > 0
        empty = [i for i in range(k) if not bool(tokens[i].any())]
        if empty:
            raise ValueError(f"speaker mask rows {empty} are empty at the {grid[1]}x{grid[2]} token grid "
                             "(speaker 1, speaker 2, background, others): draw each region larger")
        return tokens.flatten(1).to(dtype)

