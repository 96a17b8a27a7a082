"""Public call: end-to-end semantics, dispatcher reasons, report, and every bad input."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from longcat_pack.kernels import BSAReport, block_sparse_attention

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

# Backends exercised on CPU: the torch reference, and the Triton kernel in the interpreter.
BACKENDS = ["torch"] + (["triton"] if HAVE_TRITON else [])


def _qkv(grid_q, grid_k, D=64, dtype=torch.float32, H=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sq, sk = math.prod(grid_q), math.prod(grid_k)
    q = torch.randn(1, H, sq, D, generator=gen).to(dtype)
    k = torch.randn(1, H, sk, D, generator=gen).to(dtype)
    v = torch.randn(1, H, sk, D, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid_q,grid_k", [((4, 8, 8), (4, 8, 8)), ((3, 6, 7), (5, 6, 7))])
def test_sparsity_zero_equals_dense_sdpa(backend, grid_q, grid_k):
    q, k, v = _qkv(grid_q, grid_k)
    out, report = block_sparse_attention(q, k, v, grid_q, grid_k, sparsity=0.0,
                                         chunk_3d_shape_q=(2, 4, 4), chunk_3d_shape_k=(2, 4, 4),
                                         backend=backend, return_report=True)
    assert report.backend == backend
    assert report.density == pytest.approx(1.0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparsity,cdf", [(0.6, None), (None, 0.4), (0.7, 0.5)])
@pytest.mark.parametrize("grid_q,grid_k,chunk_q,chunk_k", [
    ((3, 6, 7), (3, 6, 7), (2, 4, 4), (2, 4, 4)),
    ((2, 6, 8), (5, 6, 8), (2, 4, 4), (1, 4, 8)),
])
def test_padded_grid_matches_masked_dense(backend, sparsity, cdf, grid_q, grid_k, chunk_q, chunk_k,
                                          rederive_selection, masked_dense):
    """Padding deviation: real-token pooling, padded keys get zero probability, real queries out.

    The oracle selects blocks by an independent fp64 re-derivation from token coordinates and
    attends densely under the element mask built from that selection.
    """
    q, k, v = _qkv(grid_q, grid_k, D=64)
    out, report = block_sparse_attention(q, k, v, grid_q, grid_k, sparsity=sparsity, cdf_threshold=cdf,
                                         chunk_3d_shape_q=chunk_q, chunk_3d_shape_k=chunk_k,
                                         backend=backend, return_report=True)
    assert out.shape == q.shape and report.padded
    sel = rederive_selection(q, k, grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf)
    B, H, nq = 1, q.shape[1], report.num_query_chunks
    kmax = max(len(s) for s in sel.values())
    indices = torch.zeros(B, H, nq, kmax, dtype=torch.long)
    counts = torch.zeros(B, H, nq, dtype=torch.long)
    for (b, h, c), s in sel.items():
        indices[b, h, c, : len(s)] = torch.tensor(sorted(s))
        counts[b, h, c] = len(s)
    assert torch.equal(report.blocks_per_query_chunk.long(), counts)
    expected = masked_dense(q, k, v, grid_q, grid_k, chunk_q, chunk_k, indices, counts)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=0)


def test_report_fields_topk():
    grid = (4, 8, 8)
    q, k, v = _qkv(grid, grid)
    _, report = block_sparse_attention(q, k, v, grid, grid, sparsity=0.75, chunk_3d_shape_q=(2, 4, 4),
                                       chunk_3d_shape_k=(2, 4, 4), backend="torch", return_report=True)
    assert isinstance(report, BSAReport)
    assert (report.num_query_chunks, report.num_key_chunks, report.padded) == (8, 8, False)
    assert report.blocks_per_query_chunk.shape == (1, 2, 8)
    assert (report.blocks_per_query_chunk == 2).all()  # floor(0.25 · 8)
    assert report.density == pytest.approx(0.25)
    assert report.reason == "requested"


def test_output_dtype_and_order_fp16():
    """fp16 through the default path keeps dtype and raster order (checked against fp32 run)."""
    grid = (2, 4, 8)
    q, k, v = _qkv(grid, grid, D=64)
    out16 = block_sparse_attention(q.half(), k.half(), v.half(), grid, grid, sparsity=0.5,
                                   chunk_3d_shape_q=(2, 4, 4), chunk_3d_shape_k=(2, 4, 4))
    out32 = block_sparse_attention(q, k, v, grid, grid, sparsity=0.5,
                                   chunk_3d_shape_q=(2, 4, 4), chunk_3d_shape_k=(2, 4, 4))
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.float(), out32, atol=5e-3, rtol=0)


def test_auto_on_cpu_uses_reference():
    grid = (2, 4, 4)
    q, k, v = _qkv(grid, grid)
    _, report = block_sparse_attention(q, k, v, grid, grid, return_report=True)
    assert report.backend == "torch" and "not CUDA" in report.reason


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not importable")
@pytest.mark.parametrize("D,dtype,match", [(32, torch.float32, "head_dim 32"),
                                           (64, torch.bfloat16, "dtype")])
def test_forced_triton_falls_back_with_reason(D, dtype, match):
    grid = (2, 4, 4)
    q, k, v = _qkv(grid, grid, D=D, dtype=dtype)
    out, report = block_sparse_attention(q, k, v, grid, grid, sparsity=0.5, backend="triton",
                                         return_report=True)
    assert report.backend == "torch" and match in report.reason
    assert out.shape == q.shape


def test_triton_not_importable_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "longcat_pack.kernels.bsa_fwd_triton", raising=False)
    monkeypatch.delattr(sys.modules["longcat_pack.kernels"], "bsa_fwd_triton", raising=False)
    grid = (2, 4, 4)
    q, k, v = _qkv(grid, grid)
    _, report = block_sparse_attention(q, k, v, grid, grid, backend="triton", return_report=True)
    assert report.backend == "torch" and report.reason.startswith("triton not importable")


def test_forced_triton_fallback_warns_once_per_reason(monkeypatch, caplog):
    """A run makes thousands of BSA calls; the fallback warning appears once per reason, not
    once per call (every report still carries the reason)."""
    api = sys.modules["longcat_pack.kernels.api"]
    monkeypatch.setattr(api, "_warned_fallbacks", set())
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "longcat_pack.kernels.bsa_fwd_triton", raising=False)
    monkeypatch.delattr(sys.modules["longcat_pack.kernels"], "bsa_fwd_triton", raising=False)
    grid = (2, 4, 4)
    q, k, v = _qkv(grid, grid)
    with caplog.at_level("WARNING", logger=api.logger.name):
        reports = [block_sparse_attention(q, k, v, grid, grid, backend="triton", return_report=True)[1]
                   for _ in range(3)]
    warnings = [r.getMessage() for r in caplog.records if r.name == api.logger.name]
    assert len(warnings) == 1 and "triton not importable" in warnings[0], warnings
    assert all(r.reason.startswith("triton not importable") for r in reports)


GOOD = {"grid_q": (2, 4, 4), "grid_k": (2, 4, 4)}


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"sparsity": "0.5"}, "sparsity"),
    ({"cdf_threshold": 0.0}, "cdf_threshold"),
    ({"cdf_threshold": 1.5}, "cdf_threshold"),
    ({"sparsity": None, "cdf_threshold": None}, "both be None"),
    ({"chunk_3d_shape_q": (0, 4, 4)}, "chunk_3d_shape_q"),
    ({"chunk_3d_shape_k": (4, -1, 4)}, "chunk_3d_shape_k"),
    ({"grid_q": (2, 4, 5)}, "grid_q"),
    ({"grid_k": (3, 4, 4)}, "grid_k"),
    ({"backend": "cuda"}, "backend"),
])
def test_bad_input_raises(kwargs, match):
    q, k, v = _qkv((2, 4, 4), (2, 4, 4))
    args = {**GOOD, **kwargs}
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, **args)


@pytest.mark.parametrize("shapes,match", [
    (((1, 2, 32, 64), (1, 3, 32, 64), (1, 3, 32, 64)), "heads"),
    (((1, 2, 32, 64), (1, 2, 32, 32), (1, 2, 32, 32)), "head_dim"),
    (((1, 2, 32, 64), (1, 2, 32, 64), (1, 2, 16, 64)), "k and v"),
    (((2, 32, 64), (1, 2, 32, 64), (1, 2, 32, 64)), "q must be a 4-D"),
])
def test_mismatched_shapes_raise(shapes, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, **GOOD)
