"""DiT self-attention dispatch to block-sparse attention."""


import pytest
import torch
from longcat_pack.longcat import attention as attention_module
from longcat_pack.longcat.bsa_settings import BSASettings
from tiny_dit import TINY, BSALog, tiny_dit

SMALL_CHUNK = dict(chunk_3d_shape_q=(2, 2, 2), chunk_3d_shape_k=(2, 2, 2), backend="torch")


def inputs(t=4, h=8, w=8):
    g = torch.Generator().manual_seed(5)
    return torch.randn(1, 4, t, h, w, generator=g), torch.randn(1, 6, 32, generator=g)


@pytest.fixture
def spy(monkeypatch):
    calls = []

    def fake(q, k, v, grid_q, grid_k, return_report=False, **kwargs):
        calls.append({"grid_q": grid_q, "grid_k": grid_k, "sq": q.shape[2], "sk": k.shape[2], **kwargs})
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return (out, {"fake": True}) if return_report else out

    monkeypatch.setattr(attention_module, "block_sparse_attention", fake)
    return calls


def run(model, x, ctx, opts, **kw):
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), ctx, transformer_options=opts, **kw)


def test_bsa_used_for_self_attention_only_when_settings_present(spy):
    model, (x, ctx) = tiny_dit(), inputs()
    run(model, x, ctx, {})
    assert spy == []
    settings = BSASettings(sparsity=0.5, **SMALL_CHUNK)
    run(model, x, ctx, {"longcat_bsa": settings})
    assert len(spy) == TINY["depth"]  # one self-attention call per block; cross-attention stays dense
    assert spy[0]["grid_q"] == spy[0]["grid_k"] == (4, 4, 4)
    assert spy[0]["sparsity"] == 0.5 and spy[0]["chunk_3d_shape_q"] == (2, 2, 2)


def test_image_mode_never_uses_bsa(spy):
    model, (x, ctx) = tiny_dit(), inputs(t=1)
    run(model, x, ctx, {"longcat_bsa": BSASettings(**SMALL_CHUNK)})
    assert spy == []


def test_dense_blocks_and_sigma_window_honoured(spy):
    model, (x, ctx) = tiny_dit(), inputs()
    run(model, x, ctx, {"longcat_bsa": BSASettings(dense_blocks=frozenset({0}), **SMALL_CHUNK)})
    assert len(spy) == 1
    spy.clear()
    window = BSASettings(sigma_min=0.2, sigma_max=0.6, **SMALL_CHUNK)
    run(model, x, ctx, {"longcat_bsa": window, "sigmas": torch.tensor([0.9])})
    assert spy == []
    run(model, x, ctx, {"longcat_bsa": window, "sigmas": torch.tensor([0.5])})
    assert len(spy) == 2


def test_conditioning_split_calls_with_own_grids_and_log_records(spy):
    model, (x, ctx), log = tiny_dit(), inputs(), BSALog()
    run(model, x, ctx, {"longcat_bsa": BSASettings(**SMALL_CHUNK), "longcat_bsa_log": log}, num_cond_latents=1)
    assert [(c["grid_q"], c["grid_k"]) for c in spy[:2]] == [((1, 4, 4), (1, 4, 4)), ((3, 4, 4), (4, 4, 4))]
    assert [i for i, _ in log.reports] == [0, 0, 1, 1]


def test_cached_path_uses_noise_grid(spy):
    model, (x, ctx) = tiny_dit(), inputs()
    cache = model.build_kv_cache(x[:, :, :2])
    spy.clear()
    run(model, x[:, :, 2:], ctx, {"longcat_bsa": BSASettings(**SMALL_CHUNK)}, num_cond_latents=2, kv_cache=cache)
    assert (spy[0]["grid_q"], spy[0]["grid_k"], spy[0]["sk"]) == ((2, 4, 4), (4, 4, 4), 64)
    spy.clear()
    run(model, x[:, :, 2:3], ctx, {"longcat_bsa": BSASettings(**SMALL_CHUNK)}, num_cond_latents=2, kv_cache=cache)
    assert spy == []  # one noise frame: T = 1 in the cached path, as official


@pytest.mark.parametrize("num_cond", [0, 1])
def test_real_kernel_sparsity_zero_equals_dense(num_cond):
    model, (x, ctx) = tiny_dit(), inputs()
    dense = run(model, x, ctx, {}, num_cond_latents=num_cond)
    sparse = run(model, x, ctx, {"longcat_bsa": BSASettings(sparsity=0.0, **SMALL_CHUNK)}, num_cond_latents=num_cond)
    # fp32 torch reference: same softmax, different summation order.
    torch.testing.assert_close(sparse, dense, atol=2e-5, rtol=1e-4)


def test_real_kernel_sparse_differs_and_reports():
    model, (x, ctx), log = tiny_dit(), inputs(), BSALog()
    dense = run(model, x, ctx, {})
    sparse = run(model, x, ctx, {"longcat_bsa": BSASettings(sparsity=0.75, **SMALL_CHUNK), "longcat_bsa_log": log})
    assert not torch.allclose(sparse, dense, atol=1e-4)
    records = [report for _, report in log.reports]
    assert len(records) == 2 and records[0].backend == "torch"
    assert records[0].density == pytest.approx(0.25)


def test_compiled_dit_with_bsa_equals_eager():
    """What ComfyUI's TorchCompileModel does (inductor), with BSA on and a log: one full graph
    (the kernels' custom op is one node), same output and reports as eager. ~20 s on 2 CPU cores."""
    model, (x, ctx), log = tiny_dit(), inputs(), BSALog()
    opts = {"longcat_bsa": BSASettings(sparsity=0.5, **SMALL_CHUNK), "longcat_bsa_log": log}

    def forward(x, t, c):
        return model(x, t, c, transformer_options=opts)

    torch._dynamo.reset()
    with torch.no_grad():
        want = forward(x, torch.tensor([500.0]), ctx)
        got = torch.compile(forward, fullgraph=True, backend="inductor")(x, torch.tensor([500.0]), ctx)
    # inductor fuses and reorders the fp32 elementwise work around the op.
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    eager, compiled = log.reports[:2], log.reports[2:]
    assert [i for i, _ in compiled] == [0, 1]
    for (_, a), (_, b) in zip(eager, compiled):
        assert b.backend == a.backend == "torch" and b.density == pytest.approx(a.density) == 0.5
        assert torch.equal(b.blocks_per_query_chunk, a.blocks_per_query_chunk)
