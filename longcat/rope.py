"""3D rotary position embedding of the LongCat DiT (the official ``rope_3d.py``).

Head features split ``[t | h | w]`` with ``dim_t = D − 4·(D//6)`` and ``dim_h = dim_w = 2·(D//6)``
(44/42/42 at D = 128), θ = 10000, integer grid positions from 0, interleaved (GPT-J) pairs:
``(x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin)``. Computed in fp32, cast back.
Tables are cached per grid in a plain dict (no state-dict entries). Imports nothing from ComfyUI.
"""

from collections import OrderedDict

import torch

ROPE_THETA = 10000.0
_MAX_CACHED_GRIDS = 4  # a run uses one or two grids; bound memory when many sizes are tried


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Per-axis feature counts ``(dim_t, dim_h, dim_w)``; 128 → (44, 42, 42)."""
    if head_dim % 8:
        raise ValueError(f"head_dim must be a multiple of 8 for 3D RoPE, got {head_dim}")
    dim_hw = 2 * (head_dim // 6)
    return head_dim - 2 * dim_hw, dim_hw, dim_hw


def axis_angles(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Angles ``pos·θ^(−2j/dim)`` with each frequency repeated twice (interleaved): fp32 ``[n, dim]``
    for fp32 ``positions`` ``[n]``.

    The frequencies are computed on the CPU in fp32 as ``1 / θ^(2j/dim)``, like the official
    table, so angles match bit for bit (GPU pow differs in the last ulp).
    """
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return torch.outer(positions.float(), inv_freq.to(positions.device)).repeat_interleave(2, dim=-1)


def _axis_angles(n: int, dim: int) -> torch.Tensor:
    return axis_angles(torch.arange(n, dtype=torch.float32), dim)


def rope_table(grid: tuple[int, int, int], head_dim: int, device=None,
               ref_position: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for a ``(T, H, W)`` token grid: fp32 ``[T·H·W, head_dim]`` each, T-major.

    ref_position: None for temporal positions 0..T−1; else frame 0 is a reference frame placed at
    that temporal position and frames 1..T−1 take 0..T−2 (the Avatar continuation, docs/avatar.md).
    Angles are built on the CPU; cos and sin are taken on ``device`` (where the official code takes them).
    """
    t, h, w = grid
    dim_t, dim_h, dim_w = rope_axis_dims(head_dim)
    if ref_position is None:
        angles_t = _axis_angles(t, dim_t)
    else:
        positions = torch.cat([torch.tensor([float(ref_position)]), torch.arange(t - 1, dtype=torch.float32)])
        angles_t = axis_angles(positions, dim_t)
    at = angles_t[:, None, None, :].expand(t, h, w, dim_t)
    ah = _axis_angles(h, dim_h)[None, :, None, :].expand(t, h, w, dim_h)
    aw = _axis_angles(w, dim_w)[None, None, :, :].expand(t, h, w, dim_w)
    angles = torch.cat([at, ah, aw], dim=-1).reshape(t * h * w, head_dim).to(device)
    return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Interleaved ``rotate_half``: each adjacent pair ``(x0, x1)`` → ``(−x1, x0)``."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x ``[B, heads, S, D]`` with tables ``[S, D]`` in fp32; returns x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_pairs(xf) * sin).to(x.dtype)


class RopeCache:
    """Per-(grid, head_dim, device) cache of ``rope_table``; a plain object, never in a state dict."""

    def __init__(self):
        self._tables: OrderedDict = OrderedDict()

    def get(self, grid: tuple[int, int, int], head_dim: int, device,
            ref_position: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(int(g) for g in grid), head_dim, str(device), ref_position)
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        table = rope_table(key[0], head_dim, device, ref_position)
        self._tables[key] = table
        while len(self._tables) > _MAX_CACHED_GRIDS:
            self._tables.popitem(last=False)
        return table

    def clear(self) -> None:
        """Drop every table (frees their device memory; the next ``get`` rebuilds)."""
        self._tables.clear()
