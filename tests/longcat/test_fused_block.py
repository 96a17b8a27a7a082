"""The DiT built with the fused block kernels runs them, equals the torch ops, and compiles once.

The fused kernels run on CPU tensors under TRITON_INTERPRET=1 in fp32 here (on the GPU they run
in bf16; tests/kernels/test_block_ops.py pins each op's tolerance). Each test counts the kernel
launches, so a layer that silently took the torch ops fails.
"""

import pytest
import torch
from longcat_pack.kernels import block_triton
from longcat_pack.longcat.block_kernels import TORCH_KERNELS, FusedBlockKernels, choose_block_kernels
from longcat_pack.longcat.bsa_settings import BSASettings
from tiny_dit import BSALog, tiny_dit
from torch._dynamo.testing import CompileCounter

SMALL_CHUNK = {"chunk_3d_shape_q": (2, 2, 2), "chunk_3d_shape_k": (2, 2, 2), "backend": "torch"}


def inputs(t=4, h=8, w=8, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, t, h, w, generator=g), torch.randn(1, 6, 32, generator=g)


KERNELS = ("ln_modulate", "rms_rope_", "gated_residual_", "swiglu_")
FUSED = FusedBlockKernels(cpu_interpreter=True)


@pytest.fixture
def launches(monkeypatch):
    """Counts each fused kernel's launches (by name), through the functions the custom ops call."""
    counts = dict.fromkeys(KERNELS, 0)
    for name in KERNELS:
        def counted(*args, _name=name, _kernel=getattr(block_triton, name)):
            counts[_name] += 1
            return _kernel(*args)

        monkeypatch.setattr(block_triton, name, counted)
    return counts


def per_forward(depth):
    """Launches of one forward with cross-attention and no cache: per block two modulated
    LayerNorms and the affine one, q and k in the qkv output and the cross-attention q, two
    gated residuals, one SwiGLU; the final layer's modulated LayerNorm."""
    return {"ln_modulate": 3 * depth + 1, "rms_rope_": 3 * depth, "gated_residual_": 2 * depth, "swiglu_": depth}


def both(fn, **overrides):
    """``fn(model)`` for the tiny DiT on the torch ops, then for the same weights on the fused kernels."""
    return fn(tiny_dit(**overrides, block_kernels=TORCH_KERNELS)), fn(tiny_dit(**overrides, block_kernels=FUSED))


def close(got, want):
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_auto_choice_is_torch_on_the_cpu():
    assert choose_block_kernels("auto", "cpu", torch.float32).name == "torch"
    assert choose_block_kernels("torch", "cuda", torch.bfloat16).name == "torch"
    with pytest.raises(ValueError, match="fused block kernels cannot run here: the model runs on cpu"):
        choose_block_kernels("fused", "cpu")
    with pytest.raises(ValueError, match="block_kernels must be one of"):
        choose_block_kernels("triton", "cuda")


def test_fused_kernels_on_cpu_tensors_are_refused_unless_asked():
    model = tiny_dit(block_kernels=FusedBlockKernels())
    x, ctx = inputs()
    with pytest.raises(RuntimeError, match="built with the fused block kernels got cpu tensors"):
        model(x, torch.tensor([700.0]), ctx)


@pytest.mark.parametrize("opts", [{}, {"longcat_bsa": BSASettings(sparsity=0.5, **SMALL_CHUNK)}],
                         ids=["dense", "bsa"])
@pytest.mark.parametrize("num_cond", [0, 1])
def test_fused_forward_equals_torch_path(launches, opts, num_cond):
    x, ctx = inputs()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])

    def forward(model):
        with torch.no_grad():
            return model(x, torch.tensor([700.0]), ctx, mask, num_cond_latents=num_cond,
                         transformer_options=dict(opts))

    want = forward(tiny_dit(block_kernels=TORCH_KERNELS))
    assert not any(launches.values())  # the torch ops launch no kernel
    close(forward(tiny_dit(block_kernels=FUSED)), want)
    assert launches == per_forward(2)


def test_fused_kv_cache_equals_torch_path(launches):
    """Building the cache (pre-RoPE k) and sampling over it take the fused path's un-roped k."""
    x, ctx = inputs(t=5)

    def cached_forward(model):
        with torch.no_grad():
            cache = model.build_kv_cache(x[:, :, :2])
            out = model(x[:, :, 2:], torch.tensor([700.0]), ctx, num_cond_latents=2, kv_cache=cache)
        return cache, out

    (cache_want, want), (cache_got, got) = both(cached_forward)
    close(got, want)
    for i in cache_want:
        close(cache_got[i][0], cache_want[i][0])
        close(cache_got[i][1], cache_want[i][1])
    # the cache build skips cross-attention (no affine LayerNorm, no cross q): 2 and 2 per block fewer
    assert launches["rms_rope_"] == 2 * 2 + 3 * 2 and launches["ln_modulate"] == (2 * 2 + 1) + (3 * 2 + 1)


def compile_blocks(model, backend):
    """What per-block compile options (KJNodes, the wrappers) do: each block its own compile."""
    for block in model.blocks:
        block.compile(backend=backend, fullgraph=True)


@pytest.mark.parametrize("kernels", [TORCH_KERNELS, FUSED], ids=["torch", "fused"])
def test_blocks_compile_once_for_every_block(launches, kernels):
    """10 blocks (more than dynamo's default recompile limit of 8), BSA with a dense block and a
    BSA log: one graph for the sparse blocks, one for the dense block, no graph break
    (fullgraph), and the same output and reports as eager; the compiled blocks keep the kernels."""
    model, (x, ctx) = tiny_dit(depth=10, block_kernels=kernels), inputs()
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
    want_launches = {name: 3 * n for name, n in per_forward(10).items()} if kernels is FUSED else dict.fromkeys(KERNELS, 0)
    assert launches == want_launches
