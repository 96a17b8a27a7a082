"""Sparse forward: torch reference and Triton kernel (interpreter on CPU) vs masked dense softmax.

Block lists here are random (ragged counts, unsorted ids) so the kernels are tested apart from
the gate. Shapes stay tiny: the interpreter costs a few ms per tile step.
"""

import pytest
import torch
from longcat_pack.kernels.chunking import from_chunk_order, make_layout, to_chunk_order
from longcat_pack.kernels.reference import bsa_fwd_reference

try:
    from longcat_pack.kernels.bsa_fwd_triton import bsa_fwd_triton
except ImportError:  # triton missing: the Triton cases skip, the reference cases still run
    bsa_fwd_triton = None

# Tolerances vs the fp64 oracle: fp32 math differs by accumulation order only (~1e-6); fp16
# operands (q, k, v and P rounded to fp16 before the dots) give ~1e-3 relative error.
ATOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 4e-3}

# (grid_q, grid_k, chunk_q, chunk_k)
CASES = {
    "divisible": ((4, 8, 8), (4, 8, 8), (2, 4, 4), (2, 4, 4)),
    "padded": ((3, 6, 7), (3, 6, 7), (2, 4, 4), (2, 4, 4)),
    "tq_ne_tk_chunks_differ": ((2, 8, 8), (5, 6, 8), (2, 4, 4), (1, 4, 8)),
    "odd_chunks": ((2, 5, 9), (3, 5, 9), (1, 3, 5), (2, 2, 3)),
    "chunk_256": ((2, 8, 16), (2, 8, 16), (2, 8, 16), (2, 8, 8)),
}


def _random_lists(B, H, nq, nk, gen):
    """Random distinct key-chunk ids per query chunk, ragged counts in [1, nk]."""
    kmax = max(1, (nk + 1) // 2)
    indices = torch.stack([torch.randperm(nk, generator=gen)[:kmax] for _ in range(B * H * nq)])
    counts = torch.randint(1, kmax + 1, (B, H, nq), generator=gen, dtype=torch.int32)
    return indices.view(B, H, nq, kmax).to(torch.int32), counts


def _run(fwd, case, dtype, D=64, B=1, H=2, seed=0):
    grid_q, grid_k, chunk_q, chunk_k = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    lq, lk = make_layout(grid_q, chunk_q), make_layout(grid_k, chunk_k)
    q = torch.randn(B, H, lq.num_tokens, D, generator=gen).to(dtype)
    k = torch.randn(B, H, lk.num_tokens, D, generator=gen).to(dtype)
    v = torch.randn(B, H, lk.num_tokens, D, generator=gen).to(dtype)
    indices, counts = _random_lists(B, H, lq.num_chunks, lk.num_chunks, gen)
    valid_k = lk.valid() if lk.padded else None
    qc, kc, vc = to_chunk_order(q, lq), to_chunk_order(k, lk), to_chunk_order(v, lk)
    oc = fwd(qc, kc, vc, indices, counts, lq.chunk_size, lk.chunk_size, valid_k)
    assert oc.dtype == dtype and oc.shape == qc.shape
    return from_chunk_order(oc, lq), (q, k, v, grid_q, grid_k, chunk_q, chunk_k, indices, counts)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_matches_masked_dense(case, dtype, masked_dense):
    out, args = _run(bsa_fwd_reference, case, dtype, D=16)
    torch.testing.assert_close(out.double(), masked_dense(*args), atol=ATOL[dtype], rtol=0)


needs_triton = pytest.mark.skipif(bsa_fwd_triton is None, reason="triton not importable")


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_matches_reference_and_masked_dense(case, dtype, masked_dense):
    if case == "chunk_256" and dtype == torch.float16:
        pytest.skip("one dtype is enough for the 256-token (row-split) case")
    out, args = _run(bsa_fwd_triton, case, dtype)
    ref, _ = _run(bsa_fwd_reference, case, dtype)
    dense = masked_dense(*args)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), dense, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(out.double(), ref.double(), atol=ATOL[dtype], rtol=0)


@needs_triton
def test_triton_head_dim_128_fp16(masked_dense):
    out, args = _run(bsa_fwd_triton, "padded", torch.float16, D=128, H=1)
    torch.testing.assert_close(out.double(), masked_dense(*args), atol=ATOL[torch.float16], rtol=0)


@needs_triton
@pytest.mark.parametrize("dtype,D,match", [
    (torch.bfloat16, 64, "dtype"),
    (torch.float16, 32, "head_dim 32"),
])
def test_triton_rejects_unsupported(dtype, D, match):
    x = torch.randn(1, 1, 32, D).to(dtype)
    idx, cnt = torch.zeros(1, 1, 1, 1, dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match=match):
        bsa_fwd_triton(x, x, x, idx, cnt, 32, 32)



def _sorted_lists(indices, counts):
    """Each list's used entries ascending (what the gating produces, what key ranges need)."""
    slot = torch.arange(indices.shape[-1])
    big = torch.iinfo(torch.int32).max
    used = torch.where(slot < counts[..., None], indices, big).sort(-1).values
    return torch.where(slot < counts[..., None], used, indices).contiguous()


@needs_triton
@pytest.mark.parametrize("case", ["divisible", "padded", "tq_ne_tk_chunks_differ"])
@pytest.mark.parametrize("passes", [2, 3, 7])
def test_key_range_passes_equal_one_pass(case, passes):
    """Key ranges as separate launches carry fp32 state: bitwise the one-pass result, also when
    a query chunk has no block in some range (7 ranges over ≤ 8 key chunks)."""
    def fwd(passes):
        def run(qc, kc, vc, indices, counts, cq, ck, valid_k):
            return bsa_fwd_triton(qc, kc, vc, _sorted_lists(indices, counts), counts, cq, ck,
                                  valid_k, kv_passes=passes)
        return run

    one, _ = _run(fwd(1), case, torch.float32)
    split, _ = _run(fwd(passes), case, torch.float32)
    assert torch.equal(split, one)


@needs_triton
@pytest.mark.parametrize("passes", [0, 1.5, None])
def test_key_range_passes_rejects_bad_values(passes):
    x = torch.randn(1, 1, 32, 64)
    idx, cnt = torch.zeros(1, 1, 1, 1, dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="kv_passes"):
        bsa_fwd_triton(x, x, x, idx, cnt, 32, 32, kv_passes=passes)


@needs_triton
def test_auto_kv_passes_follows_l2(monkeypatch):
    """One pass while one head's K+V fits 3/4 of L2, else ranges of at most half of it; one pass
    on GPUs older than Hopper (no L2 size given)."""
    from longcat_pack.kernels import bsa_fwd_triton as mod

    monkeypatch.setattr(mod, "_hopper_l2_bytes", lambda device: 60 * 2**20)

    class FakeCudaKeys:  # only what auto_kv_passes reads: a CUDA tensor's shape and item size
        is_cuda = True
        device = None

        def __init__(self, tokens):
            self.shape = (1, 32, tokens, 128)

        def element_size(self):
            return 2

    assert mod.auto_kv_passes(FakeCudaKeys(84_480)) == 1    # 720p: 41 MiB per head
    assert mod.auto_kv_passes(FakeCudaKeys(168_960)) == 3   # refine: 82.5 MiB
    assert mod.auto_kv_passes(FakeCudaKeys(337_920)) == 6   # T96 H44 W80: 165 MiB
    assert mod.auto_kv_passes(torch.zeros(1, 1, 10**6, 128)) == 1  # CPU: no L2 to fit
    monkeypatch.setattr(mod, "_hopper_l2_bytes", lambda device: None)
    assert mod.auto_kv_passes(FakeCudaKeys(168_960)) == 1
