"""3D-chunk token reorder for block-sparse attention, with per-axis padding and its inverse.

Tokens arrive in T-major raster order of a (T, H, W) grid. BSA groups them into 3D chunks of
(t, h, w) tokens: chunks are ordered raster over the chunk grid (T/t, H/h, W/w), tokens inside a
chunk raster over (t, h, w) — the official LongCat order.

Deviation from the official code, which asserts divisibility: when an axis is not a multiple of
the chunk, the grid is padded per axis to the next multiple. Inside each chunk the *real* tokens
come first (in (t, h, w) raster order) and the padded slots last, so a chunk is described by one
number, its count of real tokens (``ChunkLayout.valid``), which the gating and the kernels use to
exclude padding (pinned by tests/kernels/test_chunking.py::test_real_tokens_first_in_partial_chunks).
For divisible grids the order is exactly the official one.

Imports only torch; must not import triton, the model package or ComfyUI.
"""

import functools
from dataclasses import dataclass

import torch


def check_triple(name, value):
    """Validate a (T, H, W)-like triple of positive ints; return it as a tuple."""
    try:
        triple = tuple(int(x) for x in value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 positive ints, got {value!r}") from None
    if len(triple) != 3 or any(x < 1 for x in triple) or any(int(x) != x for x in value):
        raise ValueError(f"{name} must be 3 positive ints, got {value!r}")
    return triple


@dataclass(frozen=True)
class ChunkLayout:
    """How one token grid maps onto 3D chunks.

    Attributes:
        grid: (T, H, W) token grid; ``num_tokens = T·H·W``.
        chunk: (t, h, w) chunk shape; ``chunk_size = t·h·w``.
        chunk_grid: (ceil(T/t), ceil(H/h), ceil(W/w)); ``num_chunks`` is its product.
        padded: whether any axis needed padding.
    """

    grid: tuple
    chunk: tuple

    @property
    def chunk_grid(self):
        return tuple(-(-g // c) for g, c in zip(self.grid, self.chunk))

    @property
    def num_tokens(self):
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def chunk_size(self):
        return self.chunk[0] * self.chunk[1] * self.chunk[2]

    @property
    def num_chunks(self):
        n = self.chunk_grid
        return n[0] * n[1] * n[2]

    @property
    def padded(self):
        return any(g % c for g, c in zip(self.grid, self.chunk))

    def valid(self, device=None):
        """Real tokens per chunk, int32 ``[num_chunks]`` (``chunk_size`` where not padded).

        Built once per (layout, device) and shared: the attention of every layer and step asks
        for the same tables, so callers must not write into them (likewise the two indices)."""
        return _cached(_valid, self, device)

    def gather_index(self, device=None):
        """Raster token index for every chunk-order slot, int64 ``[num_chunks·chunk_size]``.

        Padded slots hold ``num_tokens`` (one past the last token), so gathering from a tensor with
        one extra zero row appended fills them with zeros. Real tokens come first in each chunk.
        """
        return _cached(_gather_index, self, device)

    def scatter_index(self, device=None):
        """Chunk-order slot of every raster token, int64 ``[num_tokens]`` (inverse of gather)."""
        return _cached(_scatter_index, self, device)


@functools.lru_cache(maxsize=32)
def _cached(build, layout, device):
    return build(layout, device)


def _valid(layout, device):
    per_axis = []
    for g, c, n in zip(layout.grid, layout.chunk, layout.chunk_grid):
        starts = torch.arange(n, device=device) * c
        per_axis.append((g - starts).clamp(max=c))
    counts = per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]
    return counts.reshape(-1).to(torch.int32)


def _gather_index(layout, device):
    (T, H, W), (t, h, w) = layout.grid, layout.chunk
    nt, nh, nw = layout.chunk_grid
    # Coordinates of every slot in the padded grid, laid out (nt, nh, nw, t, h, w).
    ct = (torch.arange(nt, device=device)[:, None] * t + torch.arange(t, device=device))
    ch = (torch.arange(nh, device=device)[:, None] * h + torch.arange(h, device=device))
    cw = (torch.arange(nw, device=device)[:, None] * w + torch.arange(w, device=device))
    ct = ct[:, None, None, :, None, None]
    ch = ch[None, :, None, None, :, None]
    cw = cw[None, None, :, None, None, :]
    real = (ct < T) & (ch < H) & (cw < W)
    raster = (ct * H + ch) * W + cw
    raster = torch.where(real, raster, torch.full_like(raster, layout.num_tokens))
    raster = raster.reshape(layout.num_chunks, layout.chunk_size)
    real = real.expand(nt, nh, nw, t, h, w).reshape(layout.num_chunks, layout.chunk_size)
    # Stable sort on "is padding" moves real tokens to the front, keeping their raster order.
    order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices
    return torch.gather(raster, 1, order).reshape(-1)


def _scatter_index(layout, device):
    gather = layout.gather_index(device)
    slots = torch.arange(gather.numel(), device=device)
    real = gather < layout.num_tokens
    inverse = torch.empty(layout.num_tokens, dtype=torch.int64, device=device)
    inverse[gather[real]] = slots[real]
    return inverse


def make_layout(grid, chunk, grid_name="grid", chunk_name="chunk_3d_shape"):
    """Build a ``ChunkLayout``; ValueError naming the parameter on a malformed grid or chunk."""
    return ChunkLayout(check_triple(grid_name, grid), check_triple(chunk_name, chunk))


def _as_words(x):
    """View the last dim as int64 words when the layout allows (else ``x`` itself).

    The reorder is a strided copy whose cost is per element (index arithmetic), so moving 8-byte
    words instead of 2-byte bf16 values cuts that work 4×; an integer view keeps bits exact.
    """
    if x.dtype == torch.int64 or (x.shape[-1] * x.element_size()) % 8:
        return x
    try:
        return x.view(torch.int64)
    except RuntimeError:  # strides or offset not word-aligned
        return x


def to_chunk_order(x, layout):
    """Reorder ``x`` ``[B, heads, S, D]`` (raster) into chunk order ``[B, heads, Nc·C, D]``.

    Padded slots are zero. Divisible grids take a view/permute (one copy); others a gather.
    """
    return _on_words(_to_chunk_order, x, layout)


def _on_words(reorder, x, layout):
    """``reorder(x, layout)`` run on x's int64-word view where it has one (see ``_as_words``)."""
    words = _as_words(x)
    return reorder(x, layout) if words is x else reorder(words, layout).view(x.dtype)


def _to_chunk_order(x, layout):
    B, Hh, _, D = x.shape
    if not layout.padded:
        (T, H, W), (t, h, w) = layout.grid, layout.chunk
        x6 = x.reshape(B, Hh, T // t, t, H // h, h, W // w, w, D)
        x6 = x6.permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
        return x6.reshape(B, Hh, layout.num_chunks * layout.chunk_size, D)
    index = layout.gather_index(x.device)
    # One appended zero token is what padded slots gather.
    x_ext = torch.cat([x, x.new_zeros(B, Hh, 1, D)], dim=2)
    return x_ext.index_select(2, index)


def from_chunk_order(y, layout):
    """Inverse of ``to_chunk_order``: ``[B, heads, Nc·C, D]`` → raster ``[B, heads, S, D]``.

    Padded slots are dropped.
    """
    return _on_words(_from_chunk_order, y, layout)


def _from_chunk_order(y, layout):
    B, Hh, _, D = y.shape
    if not layout.padded:
        (T, H, W), (t, h, w) = layout.grid, layout.chunk
        y6 = y.reshape(B, Hh, T // t, H // h, W // w, t, h, w, D)
        y6 = y6.permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
        return y6.reshape(B, Hh, layout.num_tokens, D)
    return y.index_select(2, layout.scatter_index(y.device))
