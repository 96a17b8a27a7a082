"""torch.compile sees through block_sparse_attention: the custom op, its fake, a full graph."""

import pytest
import torch
from longcat_pack.kernels import block_sparse_attention
from longcat_pack.kernels.op import bsa_forward_op

CHUNK = {"chunk_3d_shape_q": (2, 2, 2), "chunk_3d_shape_k": (2, 2, 2)}


def qkv(grid_q, grid_k, dtype=torch.float32, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    sq, sk = grid_q[0] * grid_q[1] * grid_q[2], grid_k[0] * grid_k[1] * grid_k[2]
    return (torch.randn(1, 2, sq, D, generator=g, dtype=dtype),
            torch.randn(1, 2, sk, D, generator=g, dtype=dtype),
            torch.randn(1, 2, sk, D, generator=g, dtype=dtype))


def _compiled_equals_eager(backend, compiler, grid_q, grid_k, dtype, **kwargs):
    q, k, v = qkv(grid_q, grid_k, dtype)

    def fn(q, k, v):
        out, report = block_sparse_attention(q * 1.5, k, v, grid_q, grid_k, backend=backend,
                                             return_report=True, **CHUNK, **kwargs)
        return out.transpose(1, 2).reshape(1, q.shape[2], -1) + 1, report.blocks_per_query_chunk

    torch._dynamo.reset()
    want_out, want_counts = fn(q, k, v)
    got_out, got_counts = torch.compile(fn, fullgraph=True, backend=compiler)(q, k, v)
    # Same op on the same inputs; the traced elementwise ops around it may fuse differently.
    torch.testing.assert_close(got_out, want_out, atol=1e-6, rtol=1e-6)
    assert torch.equal(got_counts, want_counts)


@pytest.mark.parametrize("grid_q,grid_k,kwargs", [
    ((4, 4, 4), (4, 4, 4), {"sparsity": 0.5}),
    ((3, 4, 6), (4, 5, 6), {"sparsity": 0.5, "cdf_threshold": 0.6}),  # padded, Tq ≠ Tk, CDF
])
def test_fullgraph_aot_eager_torch_backend(grid_q, grid_k, kwargs):
    _compiled_equals_eager("torch", "aot_eager", grid_q, grid_k, torch.float32, **kwargs)


@pytest.mark.parametrize("grid_q", [(4, 4, 4), (3, 4, 6)])  # raster path (transposed output), padded
def test_fullgraph_aot_eager_triton_backend(grid_q):
    # Under TRITON_INTERPRET=1 on CPU (fp16/fp32); the raster path's output is a transposed view,
    # which the fake must reproduce for the compiled reshape to read it right.
    _compiled_equals_eager("triton", "aot_eager", grid_q, grid_q, torch.float16, sparsity=0.5)


def test_fullgraph_inductor_torch_backend():
    _compiled_equals_eager("torch", "inductor", (4, 4, 4), (4, 4, 4), torch.float32, sparsity=0.5)


def test_report_density_from_compiled_outputs():
    q, k, v = qkv((4, 4, 4), (3, 4, 5))

    def run(q, k, v):
        return block_sparse_attention(q, k, v, (4, 4, 4), (3, 4, 5), sparsity=0.5, backend="torch",
                                      return_report=True, **CHUNK)

    torch._dynamo.reset()
    _, want = run(q, k, v)
    _, got = torch.compile(run, fullgraph=True, backend="aot_eager")(q, k, v)
    assert got.padded and got.reason == "requested"
    assert got.density == pytest.approx(want.density) and 0 < got.density < 1


@pytest.mark.parametrize("backend,dtype,grid", [
    ("torch", torch.float32, (3, 4, 6)),
    ("triton", torch.float16, (4, 4, 4)),
])
def test_opcheck(backend, dtype, grid):
    q, k, v = qkv(grid, grid, dtype)
    args = (q, k, v, list(grid), list(grid), [2, 2, 2], [2, 2, 2], 0.5, None, backend)
    # No autograd formula: the op is forward-only, as the DiT runs under no_grad.
    torch.library.opcheck(bsa_forward_op, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
