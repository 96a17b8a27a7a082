"""Oracles for the kernels tests, re-derived from token coordinates (not from kernels/chunking.py).

Exposed as fixtures because test modules cannot import each other (no __init__.py in tests/).
"""

import math

import numpy as np
import pytest
import torch


def _chunk_ids(grid, chunk):
    """Chunk id of every raster token, LongTensor [T·H·W]; chunks raster over the chunk grid."""
    (T, H, W), (t, h, w) = grid, chunk
    nh, nw = math.ceil(H / h), math.ceil(W / w)
    tt, hh, ww = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    return (((tt // t) * nh + hh // h) * nw + ww // w).reshape(-1)


def _masked_dense(q, k, v, grid_q, grid_k, chunk_q, chunk_k, indices, counts):
    """fp64 dense softmax attention in raster order with the element mask built from the lists.

    indices/counts: [B, H, Nq, Kmax] / [B, H, Nq] (the first counts entries of each row count).
    """
    cq, ck = _chunk_ids(grid_q, chunk_q), _chunk_ids(grid_k, chunk_k)
    B, H, Nq, _ = indices.shape
    nk = int(ck.max()) + 1
    allowed = torch.zeros(B, H, Nq, nk, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for c in range(Nq):
                allowed[b, h, c, indices[b, h, c, : counts[b, h, c]].long()] = True
    mask = allowed[:, :, cq][:, :, :, ck]  # [B, H, Sq, Sk]
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v.double()


def _pooled(x, grid, chunk):
    """fp64 mean of every chunk's real tokens, [B, H, N, D]."""
    ids = _chunk_ids(grid, chunk)
    n = int(ids.max()) + 1
    out = torch.zeros(x.shape[0], x.shape[1], n, x.shape[3], dtype=torch.float64)
    out.index_add_(2, ids, x.double())
    return out / torch.bincount(ids, minlength=n).double()[:, None]


def _rederive_selection(q, k, grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf_threshold):
    """Official selection (with the K ≥ 1 floor) in numpy fp64: list of sets per (b, h, q-chunk)."""
    qp, kp = _pooled(q, grid_q, chunk_q).numpy(), _pooled(k, grid_k, chunk_k).numpy()
    B, H, nq, D = qp.shape
    nk = kp.shape[2]
    topk = None if sparsity is None else max(1, int((1 - sparsity) * nk))
    out = {}
    for b in range(B):
        for h in range(H):
            for c in range(nq):
                s = kp[b, h] @ qp[b, h, c]
                order = np.argsort(-s, kind="stable")
                if cdf_threshold is None:
                    n = topk
                else:
                    w = np.exp(s / math.sqrt(D) - (s / math.sqrt(D)).max())
                    cdf = np.cumsum(np.sort(w / w.sum())[::-1])
                    n = max(int((cdf <= cdf_threshold).sum()), topk or 1)
                out[b, h, c] = set(order[:n].tolist())
    return out


@pytest.fixture
def masked_dense():
    return _masked_dense


@pytest.fixture
def rederive_selection():
    return _rederive_selection


@pytest.fixture
def chunk_ids():
    return _chunk_ids


@pytest.fixture
def pooled_oracle():
    return _pooled
