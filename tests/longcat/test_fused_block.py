"""The DiT with its fused block kernels equals the torch path; blocks compile once for all blocks.

The fused kernels run on CPU tensors under TRITON_INTERPRET=1 in fp32 here (on the GPU they run
in bf16; tests/kernels/test_block_ops.py pins each op's tolerance).
"""

import pytest
import torch
from longcat_pack.kernels import block_ops
from longcat_pack.longcat.bsa_settings import BSASettings
from tiny_dit import BSALog, tiny_dit
from torch._dynamo.testing import CompileCounter

SMALL_CHUNK = {"chunk_3d_shape_q": (2, 2, 2), "chunk_3d_shape_k": (2, 2, 2), "backend": "torch"}


def inputs(t=4, h=8, w=8, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, t, h, w, generator=g), torch.randn(1, 6, 32, generator=g)


def both_paths(monkeypatch, fn):
    """``fn()`` on the torch path, then with the fused kernels in the interpreter."""
    monkeypatch.setattr(block_ops, "CPU_INTERPRETER", False)
    want = fn()
    monkeypatch.setattr(block_ops, "CPU_INTERPRETER", True)
    return want, fn()


def close(got, want):
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("opts", [{}, {"longcat_bsa": BSASettings(sparsity=0.5, **SMALL_CHUNK)}],
                         ids=["dense", "bsa"])
@pytest.mark.parametrize("num_cond", [0, 1])
def test_fused_forward_equals_torch_path(monkeypatch, opts, num_cond):
    model, (x, ctx) = tiny_dit(), inputs()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])

    def forward():
        with torch.no_grad():
            return model(x, torch.tensor([700.0]), ctx, mask, num_cond_latents=num_cond,
                         transformer_options=dict(opts))

    close(*reversed(both_paths(monkeypatch, forward)))


def test_fused_kv_cache_equals_torch_path(monkeypatch):
    """Building the cache (pre-RoPE k) and sampling over it take the fused path's un-roped k."""
    model, (x, ctx) = tiny_dit(), inputs(t=5)

    def cached_forward():
        with torch.no_grad():
            cache = model.build_kv_cache(x[:, :, :2])
            out = model(x[:, :, 2:], torch.tensor([700.0]), ctx, num_cond_latents=2, kv_cache=cache)
        return cache, out

    (cache_want, want), (cache_got, got) = both_paths(monkeypatch, cached_forward)
    close(got, want)
    for i in cache_want:
        close(cache_got[i][0], cache_want[i][0])
        close(cache_got[i][1], cache_want[i][1])


def compile_blocks(model, backend):
    """What per-block compile options (KJNodes, the wrappers) do: each block its own compile."""
    for block in model.blocks:
        block.compile(backend=backend, fullgraph=True)


@pytest.mark.parametrize("fused", [False, True])
def test_blocks_compile_once_for_every_block(monkeypatch, fused):
    """10 blocks (more than dynamo's default recompile limit of 8), BSA with a dense block and a
    BSA log: one graph for the sparse blocks, one for the dense block, no graph break
    (fullgraph), and the same output and reports as eager."""
    monkeypatch.setattr(block_ops, "CPU_INTERPRETER", fused)
    model, (x, ctx) = tiny_dit(depth=10), inputs()
    log = BSALog()
    opts = {"longcat_bsa": BSASettings(sparsity=0.5, dense_blocks=frozenset({3}), **SMALL_CHUNK),
            "longcat_bsa_log": log}
    with torch.no_grad():
        want = model(x, torch.tensor([700.0]), ctx, transformer_options=dict(opts))
        torch._dynamo.reset()
        counter = CompileCounter()
        compile_blocks(model, counter)
        got = model(x, torch.tensor([700.0]), ctx, transformer_options=dict(opts))
        model(x, torch.tensor([300.0]), ctx, transformer_options=dict(opts))  # a second step: no recompile
    assert counter.frame_count == 2
    close(got, want)
    eager, compiled = log.reports[:9], log.reports[9:18]
    assert [i for i, _ in compiled] == [i for i, _ in eager] == [i for i in range(10) if i != 3]
    for (_, a), (_, b) in zip(eager, compiled):
        assert torch.equal(a.blocks_per_query_chunk, b.blocks_per_query_chunk)

