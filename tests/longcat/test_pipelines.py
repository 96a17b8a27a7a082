"""The denoise loop and t2v / i2v / continuation: bookkeeping with a recording fake DiT, then a tiny real DiT."""

import pytest
import torch
from longcat_pack.longcat.guidance import cfg_zero_star, euler_step, round_timestep_bf16
from longcat_pack.longcat.pipelines import (
    TextCondition,
    continue_video,
    denoise,
    image_to_video,
    make_dit_fn,
    text_to_video,
)
from longcat_pack.longcat.schedules import distill_sigmas, normal_sigmas
from longcat_pack.longcat.standin_vae import standin_encode
from tiny_dit import latent_dit

L, CAP = 6, 32  # text tokens, caption channels (tiny)


def _text(value, masked=False):
    mask = torch.tensor([[1] * (L - 2) + [0, 0]]) if masked else None
    return TextCondition(torch.full((1, L, CAP), float(value)), mask)


class FakeDiT:
    """Records every call; returns v = −0.5·x + (mean of the item's context), fp32."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, timestep, context, context_mask=None, num_cond_latents=0, kv_cache=None,
                 return_kv=False, skip_cross_attn=False, **extra):
        self.calls.append({"x": x.clone(), "timestep": timestep.clone(), "context": context, "mask": context_mask,
                               "num_cond_latents": num_cond_latents, "kv_cache": kv_cache, "return_kv": return_kv,
                               "skip_cross_attn": skip_cross_attn, "extra": extra})
        bias = 0.0 if context is None else context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        out = -0.5 * x.float() + bias
        return (out, {0: (torch.ones(1), torch.ones(1))}) if return_kv else out


def _noise(t=3, seed=0):
    return torch.randn(1, 16, t, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_t2v_cfg_batches_uncond_then_cond_and_matches_manual_loop():
    fake, sigmas = FakeDiT(), normal_sigmas(4)
    pos, neg = _text(1.0, masked=True), _text(-2.0)
    x0 = _noise()
    out = denoise(fake, x0, sigmas, pos, neg, guidance_scale=4.0)
    assert len(fake.calls) == 4
    x = x0.clone()
    for i, call in enumerate(fake.calls):
        assert call["x"].shape[0] == 2 and torch.equal(call["x"][0], call["x"][1])
        assert call["context"][0].mean() == -2.0 and call["context"][1].mean() == 1.0  # [uncond, cond]
        assert call["mask"][0].sum() == L and call["mask"][1].sum() == L - 2  # None → ones
        assert torch.equal(call["timestep"], round_timestep_bf16(sigmas[i] * 1000).expand(2, 3))
        assert call["num_cond_latents"] == 0 and call["kv_cache"] is None
        v = -0.5 * x + torch.cat([torch.full_like(x, -2.0), torch.full_like(x, 1.0)])
        x = euler_step(x, cfg_zero_star(v[1:], v[:1], 4.0), sigmas[i], sigmas[i + 1])
    assert torch.equal(out, x)
    assert torch.equal(x0, _noise())  # caller's latents untouched


def test_no_cfg_single_forward_and_missing_negative():
    fake = FakeDiT()
    denoise(fake, _noise(), distill_sigmas(3), _text(1.0), guidance_scale=1.0)
    assert [c["x"].shape[0] for c in fake.calls] == [1, 1, 1] and fake.calls[0]["mask"] is None
    # Latents stay fp32 between steps whatever the input dtype (official vc no-cache keeps bf16).
    assert denoise(FakeDiT(), _noise().bfloat16(), distill_sigmas(3), _text(1.0)).dtype == torch.float32
    with pytest.raises(ValueError, match="negative is required"):
        denoise(fake, _noise(), distill_sigmas(3), _text(1.0), guidance_scale=2.0)
    with pytest.raises(ValueError, match="terminal 0"):
        denoise(fake, _noise(), torch.tensor([1.0, 0.5]), _text(1.0))
    with pytest.raises(ValueError, match="num_cond_latents"):
        denoise(fake, _noise(), normal_sigmas(2), _text(1.0), num_cond_latents=3)


def test_cond_frames_held_with_zero_timestep():
    fake, x0 = FakeDiT(), _noise(t=4)
    out = denoise(fake, x0, normal_sigmas(3), _text(1.0), _text(0.0), guidance_scale=3.0, num_cond_latents=2)
    assert torch.equal(out[:, :, :2], x0[:, :, :2])
    assert not torch.equal(out[:, :, 2:], x0[:, :, 2:])
    for call in fake.calls:
        assert call["num_cond_latents"] == 2 and call["x"].shape[2] == 4
        assert (call["timestep"][:, :2] == 0).all() and (call["timestep"][:, 2:] > 0).all()


def test_kv_cache_call_sequence():
    fake, x0 = FakeDiT(), _noise(t=5)
    out = denoise(fake, x0, normal_sigmas(3), _text(1.0), _text(0.0), guidance_scale=2.0,
                  num_cond_latents=2, use_kv_cache=True, offload_kv_cache=True)
    first, rest = fake.calls[0], fake.calls[1:]
    assert first["return_kv"] and first["skip_cross_attn"] and first["context"] is None
    assert torch.equal(first["x"], x0[:, :, :2]) and (first["timestep"] == 0).all()
    assert first["timestep"].shape == (1, 2) and first["extra"] == {"offload_kv_cache": True}
    assert len(rest) == 3
    for call in rest:
        assert call["x"].shape == (2, 16, 3, 2, 2) and call["num_cond_latents"] == 2
        assert call["kv_cache"] is not None and not call["return_kv"] and (call["timestep"] > 0).all()
    assert out.shape == x0.shape and torch.equal(out[:, :, :2], x0[:, :, :2])
    with pytest.raises(ValueError, match="use_kv_cache"):
        denoise(fake, x0, normal_sigmas(3), _text(1.0), use_kv_cache=True)


def test_callback_preview_and_cancel():
    seen = []
    x0 = _noise(t=3)
    denoise(FakeDiT(), x0, normal_sigmas(3), _text(1.0), num_cond_latents=1,
            callback=lambda i, n, prev: seen.append((i, n, prev)))
    assert [(i, n) for i, n, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    assert seen[0][2].shape == x0.shape and torch.equal(seen[0][2][:, :, :1], x0[:, :, :1])

    class Stop(Exception):
        pass

    def cancel(i, n, prev):
        raise Stop

    fake = FakeDiT()
    with pytest.raises(Stop):
        denoise(fake, x0, normal_sigmas(5), _text(1.0), callback=cancel)
    assert len(fake.calls) == 1


def test_t2v_i2v_vc_shapes_and_conditioning():
    gen = torch.Generator().manual_seed(0)
    fake = FakeDiT()
    lat = text_to_video(fake, _text(1.0), _text(0.0), height=32, width=16, num_frames=10,
                        sigmas=normal_sigmas(2), generator=gen)
    assert lat.shape == (1, 16, 3, 4, 2)  # 10 frames → 9 → 3 latents
    image = torch.rand(32, 16, 3)
    lat = image_to_video(fake, standin_encode, image, _text(1.0), _text(0.0), height=32, width=16,
                         num_frames=9, sigmas=normal_sigmas(2), generator=gen)
    assert torch.equal(lat[:, :, :1], standin_encode(image[None]))
    video = torch.rand(20, 32, 16, 3)
    fake = FakeDiT()
    lat = continue_video(fake, standin_encode, video, _text(1.0), _text(0.0), num_frames=13,
                         num_cond_frames=5, generator=gen)
    assert lat.shape == (1, 16, 4, 4, 2)
    assert torch.equal(lat[:, :, :2], standin_encode(video[-5:]))
    assert len(fake.calls) == 1 + 56  # cache build + the enhance_hf schedule
    fake = FakeDiT()
    continue_video(fake, standin_encode, video, _text(1.0), num_frames=13, num_cond_frames=5,
                   guidance_scale=1.0, use_kv_cache=False, sigmas=normal_sigmas(2), generator=gen)
    assert len(fake.calls) == 2 and fake.calls[0]["num_cond_latents"] == 2 and fake.calls[0]["kv_cache"] is None


def test_noise_from_generator_is_reproducible():
    def run(seed):
        return text_to_video(FakeDiT(), _text(1.0), height=16, width=16, num_frames=5, guidance_scale=1.0,
                             sigmas=normal_sigmas(2), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


# --- tiny real DiT -------------------------------------------------------------------------


def _rand_text(seed):
    gen = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(1, L, CAP, generator=gen), torch.tensor([[1] * (L - 1) + [0]]))


@torch.no_grad()
def test_real_dit_kv_cache_equals_split_path_after_one_step():
    dit_fn = make_dit_fn(latent_dit())
    x0 = torch.randn(1, 16, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([0.9, 0.6, 0.0])
    outs = [denoise(dit_fn, x0, sigmas, _rand_text(2), num_cond_latents=2, use_kv_cache=cache) for cache in (False, True)]
    assert not torch.equal(outs[0][:, :, 2:], x0[:, :, 2:])
    # fp32 model; the two paths order the attention sums differently.
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    # With CFG the official paths differ slightly: without the cache s* also covers the cond frames.
    g = [denoise(dit_fn, x0, sigmas[1:], _rand_text(2), _rand_text(3), 4.0, 2, use_kv_cache=c) for c in (False, True)]
    rel = (g[1] - g[0]).norm() / g[0].norm()
    assert 0 < rel < 1e-2, rel


@torch.no_grad()
def test_real_dit_t2v_and_i2v_run():
    dit_fn = make_dit_fn(latent_dit())
    gen = torch.Generator().manual_seed(0)
    lat = text_to_video(dit_fn, _rand_text(0), _rand_text(1), height=32, width=32, num_frames=9,
                        sigmas=normal_sigmas(2), generator=gen)
    assert lat.shape == (1, 16, 3, 4, 4) and torch.isfinite(lat).all()
    image = torch.rand(1, 32, 32, 3, generator=gen)
    lat = image_to_video(dit_fn, standin_encode, image, _rand_text(0), _rand_text(1), height=32, width=32,
                         num_frames=9, sigmas=normal_sigmas(2), generator=gen)
    assert torch.equal(lat[:, :, :1], standin_encode(image)) and torch.isfinite(lat).all()


def test_demo_script_writes_previews(tmp_path, capsys):
    import importlib.util
    import struct
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
    spec = importlib.util.spec_from_file_location("longcat_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    result = demo.main(["--out", str(tmp_path), "--steps", "2", "--backend", "torch"])
    assert result["refined"].shape == (18, 128, 128, 3) and len(result["bsa_reports"]) == 10
    png = (tmp_path / "refined.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (9 * 128, 2 * 128)
    assert "BSA: 10 calls, backend torch" in capsys.readouterr().out


@torch.no_grad()
def test_kv_cache_with_cfg_and_a_latent_batch_equals_one_by_one():
    """LongCat Sampler on a repeated latent batch with guidance and the (default) KV cache."""
    dit_fn = make_dit_fn(latent_dit())
    x0 = torch.randn(2, 16, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([0.9, 0.6, 0.0])
    pos, neg = _rand_text(2), _rand_text(3)
    batched = denoise(dit_fn, x0, sigmas, pos, neg, 4.0, 2, use_kv_cache=True)
    single = torch.cat([denoise(dit_fn, x0[i:i + 1], sigmas, pos, neg, 4.0, 2, use_kv_cache=True)
                        for i in range(2)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
