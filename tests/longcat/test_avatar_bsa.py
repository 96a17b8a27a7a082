"""Block-sparse attention on the Avatar self-attention, on the grids where the official BSA
asserts fail: a 6x10 token grid (like 480p's 30x52, not divisible by the 4x4 chunk), one-frame
condition and reference calls, the reference-skip sub-calls and the cached continuation."""

import pytest
import torch
from longcat_pack.longcat.bsa_settings import BSASettings
from tiny_avatar import avatar_inputs, tiny_avatar
from tiny_dit import BSALog

H, W = 12, 20  # latent → a 6x10 token grid


def _cases():
    x, ctx, mask, audio = avatar_inputs(8, 1, 6, height=H, width=W)
    yield "ai2v", dict(x=x, timestep=torch.tensor([500.0]), context=ctx, context_mask=mask, audio=audio,
                       num_cond_latents=1), 2  # cond (1 frame), noise
    x, ctx, mask, audio = avatar_inputs(9, 1, 9, height=H, width=W, video_frames=29)
    avc = dict(context=ctx, context_mask=mask, audio=audio, num_cond_latents=5, ref_frames=1, ref_index=6,
               mask_frame_range=1)
    yield "avc", dict(avc, x=x, timestep=torch.tensor([500.0])), 4  # ref, cond, noise front, noise skipping ref
    yield "avc_cached", dict(avc, x=x[:, :, 5:], timestep=torch.tensor([500.0]), cache_from=x[:, :, :5]), 2


def _run(model, case, settings, log=None):
    case = dict(case)
    cond = case.pop("cache_from", None)
    opts = {} if settings is None else {"longcat_bsa": settings}
    if log is not None:
        opts["longcat_bsa_log"] = log
    with torch.no_grad():
        if cond is not None:
            case["kv_cache"] = model.build_kv_cache(cond, transformer_options=opts, ref_frames=1, ref_index=6)
        return model(transformer_options=opts, **case)


@pytest.mark.parametrize("name, case, calls", list(_cases()), ids=[c[0] for c in _cases()])
def test_bsa_at_sparsity_zero_equals_dense_on_every_avatar_grid(name, case, calls):
    model = tiny_avatar(seed=5)
    dense = _run(model, case, None)
    log = BSALog()
    sparse = _run(model, case, BSASettings(sparsity=0.0, backend="torch"), log)
    torch.testing.assert_close(sparse, dense, atol=2e-5, rtol=0)
    noise_calls = [r for _, r in log.reports if r.backend == "torch"]
    cache_pass = 2 if name == "avc_cached" else 0  # the cache pass: ref and cond calls, per block
    assert len(noise_calls) == 2 * (calls + cache_pass)  # every sub-call of both blocks went block-sparse
    assert all(r.density == pytest.approx(1.0) for r in noise_calls)


def test_bsa_density_is_measured_on_the_avatar_grid():
    _, case, _ = next(_cases())
    model = tiny_avatar(seed=5)
    log = BSALog()
    dense = _run(model, case, None)
    sparse = _run(model, case, BSASettings(sparsity=0.5, chunk_3d_shape_q=(2, 2, 2), chunk_3d_shape_k=(2, 2, 2),
                                           backend="torch"), log)
    densities = [r.density for _, r in log.reports]
    noise = [r.density for _, r in log.reports if r.num_key_tokens == 6 * 60]  # the noise call sees all 6 frames
    assert len(densities) == 4 and len(noise) == 2
    assert all(0.4 < d < 0.75 for d in noise)  # about half of the key chunks kept (ragged chunks at the edges)
    assert (sparse - dense).abs().max() > 1e-4  # sparse attention really ran
