"""Conditioning split and the continuation KV cache (official semantics, docs/pipelines.md)."""


import pytest
import torch
from tiny_dit import tiny_dit

TC = 2  # conditioning latent frames


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, TC + 3, 4, 6, generator=g)
    ctx = torch.randn(1, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    return tiny_dit(), x, ctx, mask


def test_cond_outputs_ignore_noise_frames_and_text(setup):
    model, x, ctx, mask = setup
    x2 = x.clone()
    x2[:, :, TC:] = torch.randn_like(x2[:, :, TC:])
    with torch.no_grad():
        a = model(x, torch.tensor([800.0]), ctx, mask, num_cond_latents=TC)
        b = model(x2, torch.tensor([300.0]), ctx * -2, mask, num_cond_latents=TC)
    torch.testing.assert_close(a[:, :, :TC], b[:, :, :TC], atol=0, rtol=0)
    assert not torch.allclose(a[:, :, TC:], b[:, :, TC:])


def test_noise_frames_depend_on_cond_frames(setup):
    model, x, ctx, mask = setup
    x2 = x.clone()
    x2[:, :, :TC] += 1.0
    with torch.no_grad():
        a = model(x, torch.tensor([800.0]), ctx, mask, num_cond_latents=TC)
        b = model(x2, torch.tensor([800.0]), ctx, mask, num_cond_latents=TC)
    assert not torch.allclose(a[:, :, TC:], b[:, :, TC:])


def test_cond_frames_get_t_zero(setup):
    model, x, ctx, mask = setup
    per_frame = torch.tensor([[0.0] * TC + [800.0] * 3])
    with torch.no_grad():
        a = model(x, torch.tensor([800.0]), ctx, mask, num_cond_latents=TC)
        b = model(x, per_frame, ctx, mask, num_cond_latents=TC)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("offload", [False, True])
def test_cached_path_equals_split_path(setup, offload):
    model, x, ctx, mask = setup
    with torch.no_grad():
        split = model(x, torch.tensor([700.0]), ctx, mask, num_cond_latents=TC)
        cache = model.build_kv_cache(x[:, :, :TC], offload=offload)
        cached = model(x[:, :, TC:], torch.tensor([700.0]), ctx, mask, num_cond_latents=TC, kv_cache=cache)
    assert sorted(cache) == [0, 1]
    k, v = cache[0]
    assert k.shape == v.shape == (1, 2, TC * 2 * 3, 32)
    assert k.device.type == "cpu"
    # fp32 end to end; only the summation order differs between the two paths.
    torch.testing.assert_close(cached, split[:, :, TC:], atol=2e-5, rtol=1e-4)


def test_cache_broadcasts_to_cfg_batch_and_accepts_full_timesteps(setup):
    model, x, ctx, mask = setup
    xb = x.expand(2, -1, -1, -1, -1)
    ctxb = torch.cat([torch.zeros_like(ctx), ctx])
    with torch.no_grad():
        split = model(xb, torch.tensor([[0.0] * TC + [700.0] * 3] * 2), ctxb, mask, num_cond_latents=TC)
        cache = model.build_kv_cache(x[:, :, :TC])
        cached = model(xb[:, :, TC:], torch.tensor([[0.0] * TC + [700.0] * 3] * 2), ctxb, mask,
                       num_cond_latents=TC, kv_cache=cache)
    torch.testing.assert_close(cached, split[:, :, TC:], atol=2e-5, rtol=1e-4)


def test_split_path_return_kv_equals_standalone_cache(setup):
    model, x, ctx, mask = setup
    with torch.no_grad():
        _, from_split = model(x, torch.tensor([700.0]), ctx, mask, num_cond_latents=TC, return_kv=True)
        alone = model.build_kv_cache(x[:, :, :TC])
    for i in alone:
        torch.testing.assert_close(from_split[i][0], alone[i][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(from_split[i][1], alone[i][1], atol=2e-5, rtol=1e-4)


def test_cache_is_pre_rope_normed_k(setup):
    model, x, _, _ = setup
    with torch.no_grad():
        cache = model.build_kv_cache(x[:, :, :TC])
        tokens = model.x_embedder(x[:, :, :TC])
        blk = model.blocks[0]
        t_emb = model.t_embedder(torch.zeros(1, TC))
        mod = torch.nn.functional.linear(torch.nn.functional.silu(t_emb), blk.adaLN_modulation[1].weight,
                                         blk.adaLN_modulation[1].bias).unsqueeze(2)
        shift, scale = mod.chunk(6, -1)[:2]
        h = torch.nn.functional.layer_norm(tokens.view(1, TC, 6, 64), (64,), eps=1e-6) * (1 + scale) + shift
        k = blk.attn.qkv(h.view(1, -1, 64))[..., 64:128].view(1, -1, 2, 32).transpose(1, 2)
        k = blk.attn.k_norm(k)
    torch.testing.assert_close(cache[0][0], k, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad", [
    dict(num_cond_latents=1),                      # wrong token count for the cache
    dict(drop_block=True),                         # incomplete cache
])
def test_bad_cache_raises(setup, bad):
    model, x, ctx, mask = setup
    with torch.no_grad():
        cache = model.build_kv_cache(x[:, :, :TC])
    if bad.get("drop_block"):
        cache.pop(1)
    with pytest.raises(ValueError):
        model(x[:, :, TC:], torch.tensor([700.0]), ctx, mask, num_cond_latents=bad.get("num_cond_latents", TC),
              kv_cache=cache)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_cache_lives_on_cpu_and_matches_on_gpu(setup):
    model, x, ctx, mask = setup
    model = tiny_dit().cuda()
    x, ctx, mask = x.cuda(), ctx.cuda(), mask.cuda()
    with torch.no_grad():
        split = model(x, torch.tensor([700.0]), ctx, mask, num_cond_latents=TC)
        cache = model.build_kv_cache(x[:, :, :TC], offload=True)
        cached = model(x[:, :, TC:], torch.tensor([700.0]), ctx, mask, num_cond_latents=TC, kv_cache=cache)
    assert cache[0][0].device.type == "cpu"
    # TF32 may be on for CUDA matmuls: allow its ~1e-3 relative error.
    torch.testing.assert_close(cached, split[:, :, TC:], atol=5e-3, rtol=5e-3)


def test_batched_cache_tiles_over_the_cfg_batch(setup):
    """A batch-2 latent under CFG: the cache (batch 2) serves x = [uncond b0, b1, cond b0, b1]."""
    model, x, ctx, mask = setup
    xb = torch.cat([x, x.flip(-1)])  # two different latents
    x4 = torch.cat([xb, xb])
    ctx4 = torch.cat([torch.zeros_like(ctx)] * 2 + [ctx] * 2)
    with torch.no_grad():
        split = model(x4, torch.tensor([700.0]), ctx4, mask, num_cond_latents=TC)
        cache = model.build_kv_cache(xb[:, :, :TC])
        cached = model(x4[:, :, TC:], torch.tensor([700.0]), ctx4, mask, num_cond_latents=TC, kv_cache=cache)
    torch.testing.assert_close(cached, split[:, :, TC:], atol=2e-5, rtol=1e-4)
