"""Token chunking is exact, the KV cache gives the same result wherever it lives, and the
activation estimate covers the measured peak (torch path on the CPU)."""

import pytest
import torch
from longcat_pack.longcat import memory
from longcat_pack.longcat.attention import rope_rows
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.options import BSA_OPTIONS_KEY, TOKEN_CHUNK_KEY
from longcat_pack.longcat.rope import apply_rope, rope_table
from tiny_dit import tiny_dit

from cpu_peak import peak_bytes

CHUNK = TOKEN_CHUNK_KEY


def _inputs(b=2, t=5, h=8, w=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, t, h, w, generator=g)
    ctx = torch.randn(b, 7, 32, generator=g)
    mask = torch.ones(b, 7)
    mask[0, 5:] = 0
    return x, torch.tensor([700.0, 300.0][:b]), ctx, mask


def test_frame_slices_cover_everything_once():
    slices = memory.frame_slices(2, 5, 6, 13)  # 2 frames (12 tokens) per slice, per batch item
    covered = torch.zeros(2, 5, dtype=torch.int64)
    for bs, fs in slices:
        covered[bs, fs] += 1
        assert covered[bs, fs].numel() <= 2
    assert torch.equal(covered, torch.ones(2, 5, dtype=torch.int64))
    assert memory.frame_slices(2, 5, 6, 0) == [(slice(None), slice(None))]
    assert memory.frame_slices(2, 5, 6, 60) == [(slice(None), slice(None))]
    assert len(memory.frame_slices(1, 5, 6, 1)) == 5  # at least one frame per slice


# Slices of >= 12 rows: below that the CPU GEMM takes another kernel (fp32 M < 12 rounds
# differently); the DiT's slices are whole frames (>= 1560 tokens at 480p).
@pytest.mark.parametrize("chunk", [24, 50, 100])
def test_chunked_forward_equals_one_slice_bit_for_bit(chunk):
    model = tiny_dit()
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        whole = model(x, t, ctx, mask, transformer_options={CHUNK: 0})
        chunked = model(x, t, ctx, mask, transformer_options={CHUNK: chunk})
    assert torch.equal(whole, chunked)


def test_chunked_bsa_and_split_forward_equal_one_slice():
    model = tiny_dit()
    x, t, ctx, mask = _inputs(t=8, h=8, w=8)
    opts = {BSA_OPTIONS_KEY: BSASettings(sparsity=0.5, chunk_3d_shape_q=(2, 2, 2),
                                         chunk_3d_shape_k=(2, 2, 2))}
    with torch.no_grad():
        whole = model(x, t, ctx, mask, num_cond_latents=2, transformer_options={**opts, CHUNK: 0})
        chunked = model(x, t, ctx, mask, num_cond_latents=2, transformer_options={**opts, CHUNK: 32})
    assert torch.equal(whole, chunked)


def test_rope_rows_equals_apply_rope():
    cos, sin = rope_table((3, 4, 6), 32, "cpu")
    k = torch.randn(2, 2, 72, 32).to(torch.bfloat16)
    assert torch.equal(rope_rows(k, cos, sin, 10), apply_rope(k, cos, sin))


def test_bad_chunk_option_is_one_clear_error():
    model = tiny_dit()
    x, t, ctx, mask = _inputs()
    with pytest.raises(ValueError, match="longcat_token_chunk"):
        model(x, t, ctx, mask, transformer_options={CHUNK: -1})


def _continuation(model, cache, x_noise, chunk):
    t = torch.full((x_noise.shape[0],), 600.0)
    ctx = torch.randn(x_noise.shape[0], 7, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(x_noise, t, ctx, None, num_cond_latents=2, kv_cache=cache,
                     transformer_options={CHUNK: chunk})


def test_kv_cache_same_result_on_device_or_offloaded():
    model = tiny_dit()
    x, *_ = _inputs(b=1, t=5)
    cond, noise = x[:, :, :2], x[:, :, 2:]  # 24 tokens per frame
    with torch.no_grad():
        kept = model.build_kv_cache(cond, offload=False)
        offloaded = model.build_kv_cache(cond, offload=True)
    assert all(k.device.type == "cpu" for k, _ in offloaded.values())
    for chunk in (0, 48):
        a = _continuation(model, kept, torch.cat([noise, noise]), chunk)
        b = _continuation(model, offloaded, torch.cat([noise, noise]), chunk)
        assert torch.equal(a, b)


def test_kv_streamer_hands_out_every_block_in_order():
    cache = {i: (torch.full((1, 2, 3, 4), float(i)), torch.full((1, 2, 3, 4), -float(i))) for i in range(3)}
    streamer = memory.KVStreamer(cache, "cpu")
    for i in range(3):
        k, v = streamer.get(i)
        assert torch.equal(k, cache[i][0]) and torch.equal(v, cache[i][1])


def test_kv_placement():
    gib = 2**30
    assert memory.choose_kv_placement(4 * gib, 10 * gib, 5 * gib) == "gpu"
    assert memory.choose_kv_placement(6 * gib, 10 * gib, 5 * gib) == "cpu"
    assert memory.kv_cache_bytes(48, 4096, 1, 4 * 1560, 2) == 2 * 48 * 4 * 1560 * 4096 * 2


# The estimate against measured peaks: tiny DiTs on the CPU (torch path: no fused kernels, so the
# fp32 temporaries of RMSNorm/RoPE/SwiGLU count; ``fused=False``), fp32 weights and activations.
# What this shows: which tensors are alive together in the block, and that the chunked FFN / qkv,
# the KV cache's concatenation and RoPE and the head merge are counted. What it cannot show: the
# GPU path's kernels and BSA's Triton buffers (BSA on the CPU is the dense torch reference, not
# what any user runs); bench/bench_dit_memory.py checks those against
# torch.cuda.max_memory_allocated.
CASES = {
    "dense_b2": dict(batch=2, frames=6, h=16, w=16, cached=0),
    "dense_b1_long": dict(batch=1, frames=16, h=16, w=24, cached=0),
    "cached_b2": dict(batch=2, frames=4, h=16, w=16, cached=2),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("chunk", [0, 256])
def test_estimate_covers_measured_cpu_peak(name, chunk):
    c = CASES[name]
    hidden, heads = 128, 2
    model = tiny_dit(hidden_size=hidden, num_heads=heads, depth=2)
    b, t, h, w = c["batch"], c["frames"], c["h"], c["w"]
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(b, 8, 32, generator=g)
    opts = {CHUNK: chunk}
    cache = None
    if c["cached"]:
        with torch.no_grad():
            cache = model.build_kv_cache(torch.randn(1, 4, c["cached"], h, w, generator=g))
    x = torch.randn(b, 4, t, h, w, generator=g)
    timestep = torch.full((b,), 500.0)
    with torch.no_grad():
        model(x, timestep, ctx, None, num_cond_latents=c["cached"], kv_cache=cache,
              transformer_options=dict(opts))  # warm: RoPE tables
        peak = peak_bytes(lambda: model(x, timestep, ctx, None, num_cond_latents=c["cached"],
                                        kv_cache=cache, transformer_options=dict(opts)))
    shape = memory.ForwardShape(batch=b, frames=t, per_frame=h * w // 4, cached_frames=c["cached"],
                                text_tokens=8)
    ffn = model.blocks[0].ffn.w1.out_features
    estimate = memory.forward_peak_bytes(shape, hidden=hidden, heads=heads, ffn_hidden=ffn, itemsize=4,
                                         chunk=chunk, fused=False)
    print(f"{name} chunk {chunk}: estimate / measured = {estimate / peak:.3f}")
    assert peak <= estimate <= 1.3 * peak, f"{name} chunk {chunk}: estimate {estimate}, measured {peak}"


def test_chunking_lowers_the_measured_peak():
    model = tiny_dit(hidden_size=128, num_heads=2)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 16, 16, 24, generator=g), torch.randn(1, 8, 32, generator=g)
    t = torch.full((1,), 500.0)
    with torch.no_grad():
        peaks = {chunk: peak_bytes(lambda: model(x, t, ctx, None, transformer_options={CHUNK: chunk}))
                 for chunk in (0, 192)}
    assert peaks[192] < 0.8 * peaks[0], peaks
