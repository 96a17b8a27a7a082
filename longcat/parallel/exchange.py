"""Ulysses context parallel for the LongCat DiT: one video's tokens split over a process group.

Every rank runs the same DiT forward on the same inputs; ``ContextParallel`` (put into
``transformer_options[CP_OPTIONS_KEY]``) makes each rank keep only its share of the tokens:

- Sharding: for every latent frame, rank r holds a contiguous slice of that frame's H·W tokens
  (raster order; slice sizes differ by at most one, so H·W need not divide evenly, but every
  rank needs at least one token per frame: H·W ≥ the number of ranks, checked by ``check``). Each rank's shard is
  ``[B, T·hw_r, C]``, still whole frames of equal length, so the per-frame adaLN modulation,
  gates and the final layer run unchanged on the shard; patch embedding runs on the full latent
  and is sliced (``shard``).
- Self-attention: one all-to-all turns q, k, v ``[B, heads, T·hw_r, D]`` into
  ``[B, heads/N, T·H·W, D]`` in the global raster order (the slices of every rank are
  interleaved back per frame), so q/k-norm, RoPE, the conditioning split, the KV cache and BSA
  see exactly the single-GPU sequence and grid, for a subset of the heads. A second all-to-all
  returns the attention output to the token shards (``heads_from_sequence`` /
  ``sequence_from_heads``). Attention heads are independent, so the result is the single-GPU
  math; BSA's block selection is per head, so it is the same selection.
- Cross-attention, FFN and modulation are per token: computed on the local shard.
- Exit: the final layer's per-token output is all-gathered (``gather``) so every rank returns
  the whole prediction.
- KV cache: a forward with ``return_kv`` returns, on each rank, the cache for that rank's heads
  over all conditioning tokens; each rank passes its own back later.
- Collectives per forward: one ``heads_from_sequence`` and one ``sequence_from_heads`` per block,
  then one ``gather``, the same on every rank whatever the path (split, cache, BSA). A rank that
  leaves a forward early on an error of its own (ComfyUI's Cancel checked inside a layer) joins
  the rest with zeros (``drain``) so the other ranks finish and the group stays usable.

Needs ``torch.distributed`` initialised; the number of ranks must divide the number of heads.
Imports nothing from ComfyUI.
"""

import torch
import torch.distributed as dist



def check_world_size(num_heads: int, world_size: int) -> None:
    """Raise ValueError unless ``world_size`` ranks can split ``num_heads`` attention heads."""
    if world_size < 1:
        raise ValueError(f"the number of GPUs must be >= 1, got {world_size}")
    if num_heads % world_size:
        choices = [n for n in range(1, num_heads + 1) if num_heads % n == 0 and n <= 16]
        raise ValueError(f"{world_size} GPUs cannot split the DiT's {num_heads} attention heads evenly; "
                         f"use one of {choices}")


def frame_slices(tokens_per_frame: int, world_size: int) -> list[tuple[int, int]]:
    """Each rank's ``(start, stop)`` within a frame's ``tokens_per_frame`` raster tokens.

    Sizes are ``tokens_per_frame // world_size``, the first ``tokens_per_frame % world_size``
    ranks taking one more.
    """
    base, extra = divmod(tokens_per_frame, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        stop = start + base + (rank < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


class ContextParallel:
    """This rank's view of a context-parallel group: sharding, gathering and the all-to-alls.

    group: a ``torch.distributed`` process group (None: the default group). Every rank of it
    must call the DiT with the same arguments (x, timestep, context, ...); see the module
    docstring. The DiT calls the methods below; nothing else needs to.
    """

    def __init__(self, group=None):
        if not dist.is_initialized():
            raise RuntimeError("context parallel needs torch.distributed initialised "
                               "(torch.distributed.init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.joined = 0  # collectives joined since the caller last reset it (see ``drain``)
        self.broken = False  # a collective raised: the group is unusable, draining cannot help

    def __deepcopy__(self, memo):
        # transformer_options are deep-copied by ComfyUI's MODEL clones; the group is shared.
        return self

    def check(self, num_heads: int, grid: tuple[int, int, int], kv_cache=None) -> None:
        """Raise ValueError for a head count, grid or KV cache this group cannot run."""
        check_world_size(num_heads, self.world_size)
        if grid[1] * grid[2] < self.world_size:
            raise ValueError(f"context parallel over {self.world_size} ranks needs at least "
                             f"{self.world_size} tokens per latent frame, got grid {tuple(grid)}")
        if kv_cache is not None:
            heads = kv_cache[0][0].shape[1]
            if heads != num_heads // self.world_size:
                raise ValueError(f"kv_cache holds {heads} heads; under context parallel each rank "
                                 f"passes the cache its own forward returned "
                                 f"({num_heads // self.world_size} heads)")

    def _slices(self, grid) -> list[tuple[int, int]]:
        return frame_slices(grid[1] * grid[2], self.world_size)

    def _join(self, collective, *args, **kwargs) -> None:
        try:
            collective(*args, group=self.group, **kwargs)
        except BaseException:
            self.broken = True
            raise
        self.joined += 1

    def drain(self, batch: int, num_heads: int, head_dim: int, dtype, grid, blocks: int,
              out_features: int, device) -> None:
        """Join, with zeros, the collectives of a DiT forward this rank left after ``joined`` of
        them (set ``joined = 0`` before the forward), so the other ranks finish theirs.

        batch, grid: of x; num_heads, head_dim, blocks (depth): the DiT's; dtype: x's (q, k, v
        and the attention output); out_features: the final layer's width (its output is fp32).
        """
        start, stop = self._slices(grid)[self.rank]
        n_local = grid[0] * (stop - start)
        for index in range(self.joined, 2 * blocks + 1):
            if index == 2 * blocks:
                self.gather(torch.zeros(batch, n_local, out_features, device=device), grid)
            elif index % 2 == 0:
                qkv = torch.zeros(batch, num_heads, n_local, head_dim, dtype=dtype, device=device)
                self.heads_from_sequence(qkv, qkv, qkv, grid)
            else:
                width = num_heads // self.world_size * head_dim
                tokens = grid[0] * grid[1] * grid[2]
                self.sequence_from_heads(torch.zeros(batch, tokens, width, dtype=dtype, device=device), grid)

    def shard(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        """``[B, T·H·W, C]`` (every rank the same) → this rank's ``[B, T·hw_r, C]``."""
        b, _, c = tokens.shape
        start, stop = self._slices(grid)[self.rank]
        return tokens.view(b, grid[0], -1, c)[:, :, start:stop].reshape(b, -1, c)

    @torch.compiler.disable
    def gather(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        """Every rank's ``[B, T·hw_r, F]`` → ``[B, T·H·W, F]`` on every rank (raster order)."""
        b, _, f = tokens.shape
        slices = self._slices(grid)
        widest = max(stop - start for start, stop in slices)
        local = tokens.view(b, grid[0], -1, f)
        # all_gather needs equal sizes: pad the narrower slices, cut the padding off after.
        padded = local.new_zeros(b, grid[0], widest, f)
        padded[:, :, :local.shape[2]] = local
        parts = [torch.empty_like(padded) for _ in slices]
        self._join(dist.all_gather, parts, padded)
        whole = torch.cat([part[:, :, :stop - start] for part, (start, stop) in zip(parts, slices)], dim=2)
        return whole.reshape(b, -1, f)

    @torch.compiler.disable
    def heads_from_sequence(self, q, k, v, grid):
        """q, k, v ``[B, heads, T·hw_r, D]`` (this rank's tokens, all heads) →
        ``[B, heads/N, T·H·W, D]`` each (this rank's heads, every token in raster order).

        Rank r receives heads ``[r·heads/N, (r+1)·heads/N)``. One all-to-all carries all three.
        """
        b, heads, _, d = q.shape
        n, t = self.world_size, grid[0]
        h = heads // n
        slices = self._slices(grid)
        width = slices[self.rank][1] - slices[self.rank][0]
        # Send buffer [dst rank, q|k|v, B, heads of dst, T, hw_r, D]: one contiguous block per rank.
        send = q.new_empty(n, 3, b, h, t, width, d)
        for i, x in enumerate((q, k, v)):
            send[:, i].copy_(x.reshape(b, n, h, t, width, d).transpose(0, 1))
        sizes = [3 * b * h * t * (stop - start) * d for start, stop in slices]
        recv = q.new_empty(sum(sizes))
        self._join(dist.all_to_all_single, recv, send.view(-1), sizes, [send[0].numel()] * n)
        parts = [part.view(3, b, h, t, -1, d) for part in recv.split(sizes)]
        qkv = torch.cat(parts, dim=4).view(3, b, h, -1, d)
        return qkv.unbind(0)

    @torch.compiler.disable
    def sequence_from_heads(self, out: torch.Tensor, grid) -> torch.Tensor:
        """Attention output ``[B, T·H·W, heads/N·D]`` (this rank's heads) →
        ``[B, T·hw_r, heads·D]`` (this rank's tokens, every head, head-major features)."""
        b, _, f = out.shape
        n, t = self.world_size, grid[0]
        slices = self._slices(grid)
        width = slices[self.rank][1] - slices[self.rank][0]
        frames = out.view(b, t, -1, f)
        send = torch.cat([frames[:, :, start:stop].reshape(-1) for start, stop in slices])
        sizes = [b * t * (stop - start) * f for start, stop in slices]
        recv = out.new_empty(n, b, t, width, f)
        self._join(dist.all_to_all_single, recv.view(-1), send, [recv[0].numel()] * n, sizes)
        # [src rank (= head group), B, T, hw_r, f] → features ordered (head group, head, D).
        return recv.permute(1, 2, 3, 0, 4).reshape(b, t * width, n * f)
