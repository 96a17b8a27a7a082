"""The tiny Avatar DiT the Avatar tests share: config, seeded weights and seeded inputs.

``tests/data/avatar_official.safetensors`` holds outputs of the official Avatar DiT for exactly
these weights and inputs (see tests/longcat/test_avatar_official.py for how it was made).
"""

import math

import torch
from longcat_pack.longcat.avatar.dit import LongCatAvatarDiT

# The official tiny configuration (every DiT path; 94 tensors, 245,472 parameters with prenorm).
TINY_AVATAR = dict(in_channels=4, out_channels=4, hidden_size=64, depth=2, num_heads=2, caption_channels=32,
                   adaln_tembed_dim=32, frequency_embedding_size=16, audio_block=3, audio_channel=8,
                   intermediate_dim=16, output_dim=16, context_tokens=4, audio_prenorm=True)


def tiny_avatar(seed=0, **overrides) -> LongCatAvatarDiT:
    """A tiny Avatar DiT, every parameter non-trivial (norm weights near 1, biases, adaLN), eval mode.

    Parameters are filled in state-dict order from one seeded CPU generator, so the official
    model gets the same values through ``load_state_dict``."""
    model = LongCatAvatarDiT(**{**TINY_AVATAR, **overrides})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict(keep_vars=True).items():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(noise * (0.3 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1])))
    return model.eval()


def weight_checksum(model) -> float:
    """Sum of |w| over the state dict: tells whether this torch draws the same seeded weights."""
    return float(sum(v.double().abs().sum() for v in model.state_dict().values()))


def avatar_inputs(seed, batch, frames, height=8, width=8, streams=1, video_frames=None, layers=3, channels=8,
                  caption=32, text_len=6):
    """Seeded (x, context, mask, audio): x ``[B, 4, T, H, W]``, context ``[B, L, caption]``, a text
    mask with padding in every row, audio windows ``[A, F, 5, L, C]`` (A = streams or B)."""
    gen = torch.Generator().manual_seed(seed)
    video_frames = video_frames or 1 + 4 * (frames - 1)
    x = torch.randn(batch, 4, frames, height, width, generator=gen)
    context = torch.randn(batch, text_len, caption, generator=gen)
    mask = torch.ones(batch, text_len)
    mask[:, text_len - 2:] = 0
    audio = torch.randn(max(streams, 1) if streams > 1 else batch, video_frames, 5, layers, channels, generator=gen)
    return x, context, mask, audio


def speaker_masks(k, size=32):
    """``[K, size, size]`` masks: speaker 1 left, speaker 2 right, background the rest, others on top."""
    m = torch.zeros(k, size, size)
    m[0, 4:28, 2:14] = 1
    m[1, 4:28, 18:30] = 1
    m[2] = 1 - ((m[0] + m[1]) > 0).float()
    for i in range(3, k):
        m[i, 0:8, 12:20] = 1
    return m


def avatar_cases():
    """The DiT calls compared with the official Avatar DiT: ``{name: dict}`` with x, timestep,
    context, mask, audio and our forward's Avatar arguments (``cached``: run the noise frames
    after frames ``:num_cond_latents`` were turned into a KV cache by ``build_kv_cache``)."""
    cases = {}
    x, ctx, cm, audio = avatar_inputs(1, 2, 6)
    t = torch.tensor([500.0, 250.0])  # bf16-exact: our DiT rounds timesteps to bf16, fp32 official does not
    t_i2v = t[:, None].repeat(1, 6)
    t_i2v[:, 0] = 0
    base = dict(x=x, context=ctx, mask=cm, audio=audio)
    cases["at2v"] = dict(base, timestep=t)
    cases["ai2v"] = dict(base, timestep=t_i2v, num_cond_latents=1)
    cases["ai2v_zero_audio"] = dict(base, timestep=t_i2v, num_cond_latents=1, audio=torch.zeros_like(audio))
    for streams, k in ((2, 3), (3, 4)):
        x, ctx, cm, audio = avatar_inputs(2, 1, 6, streams=streams)
        ts = torch.full((1, 6), 500.0)
        ts[:, 0] = 0
        cases[f"multi{streams}_ai2v"] = dict(x=x, context=ctx, mask=cm, audio=audio, timestep=ts, num_cond_latents=1,
                                             speaker_masks=speaker_masks(k))
    # Continuation: [ref | 4 cond | 4 noise], the 29-frame clip's audio. Index 6, range 1 masks
    # noise frames 1..3 from the reference; index 10, range 3 reaches past the clip (no mask).
    for idx, rng in ((6, 1), (10, 3)):
        for streams in (1, 2):
            bsz = 2 if streams == 1 else 1
            x, ctx, cm, audio = avatar_inputs(3, bsz, 9, video_frames=29, streams=streams)
            ts = torch.full((bsz, 9), 500.0)
            ts[:, :5] = 0
            common = dict(context=ctx, mask=cm, audio=audio, num_cond_latents=5, ref_frames=1, ref_index=idx,
                          mask_frame_range=rng, speaker_masks=speaker_masks(3) if streams == 2 else None)
            cases[f"avc_{idx}_{rng}_s{streams}"] = dict(common, x=x, timestep=ts)
            cases[f"avc_{idx}_{rng}_s{streams}_cached"] = dict(common, x=x, timestep=torch.full((bsz, 4), 500.0),
                                                              cached=True)
    return cases


def run_ours(model, case):
    """Our forward on one of ``avatar_cases``."""
    kw = {k: case[k] for k in ("num_cond_latents", "ref_frames", "ref_index", "mask_frame_range", "speaker_masks")
          if case.get(k) is not None}
    x = case["x"]
    if case.get("cached"):
        tc = case["num_cond_latents"]
        cache = model.build_kv_cache(x[:1, :, :tc], ref_frames=1, ref_index=case["ref_index"])
        return model(x[:, :, tc:], case["timestep"], case["context"], case["mask"], kv_cache=cache,
                     audio=case["audio"], **kw)
    return model(x, case["timestep"], case["context"], case["mask"], audio=case["audio"], **kw)


def loop_cases():
    """Continuation sampling runs compared with the official ``generate_avc`` loop: ``{name: dict}``
    with the [cond (4) | noise (4)] latents, the reference latent, the overlap re-encode, the
    texts, the audio windows and the sampling settings (2 steps at bf16-exact timesteps)."""
    cases = {}
    for name, streams, cfg, cache in (("single_cfg_cached", 1, (4.0, 3.0), True),
                                      ("single_cfg_uncached", 1, (4.0, 3.0), False),
                                      ("multi_cfg_cached", 2, (4.0, 3.0), True),
                                      ("single_dmd_cached", 1, (1.0, 1.0), True)):
        x, ctx, mask, audio = avatar_inputs(11, 1, 9, video_frames=29, streams=streams)
        gen = torch.Generator().manual_seed(12)
        cases[name] = dict(latents=x[:, :, 1:], ref=x[:, :, :1], overlap=torch.randn(1, 4, 4, 8, 8, generator=gen),
                           pos=ctx, pos_mask=mask, neg=torch.randn(ctx.shape, generator=gen), neg_mask=mask.flip(1),
                           audio=audio, sigmas=torch.tensor([1.0, 0.5, 0.0]), text_scale=cfg[0], audio_scale=cfg[1],
                           speaker_masks=speaker_masks(3) if streams == 2 else None, use_kv_cache=cache,
                           ref_index=6, mask_frame_range=1)
    return cases


def run_our_loop(model, case):
    """``avatar_denoise`` on one of ``loop_cases``, then the overlap re-encode written over the
    condition latents (what ``extend_segment`` returns)."""
    from longcat_pack.longcat.avatar.sampling import Reference, avatar_denoise
    from longcat_pack.longcat.pipelines import TextCondition, make_dit_fn

    out = avatar_denoise(make_dit_fn(model), case["latents"], case["sigmas"],
                         TextCondition(case["pos"], case["pos_mask"]), case["audio"],
                         TextCondition(case["neg"], case["neg_mask"]), case["text_scale"], case["audio_scale"],
                         num_cond_latents=4, reference=Reference(case["ref"], case["ref_index"],
                                                                 case["mask_frame_range"]),
                         speaker_masks=case["speaker_masks"], use_kv_cache=case["use_kv_cache"])
    out[:, :, :4] = case["overlap"]
    return out
