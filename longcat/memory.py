"""Activation memory of the DiT forward: token chunking, the peak estimate, KV-cache placement.

Three things ComfyUI's offloading needs from the model and that the forward provides here:

* **Token chunking.** The per-token work around attention (adaLN norm → qkv, cross-attention,
  adaLN norm → FFN w1/w3 → SwiGLU → w2 → gated residual, RoPE of cached keys) runs over slices
  of at most ``token_chunk`` tokens, whole latent frames of one batch item each, written into
  one output.
  Every op there is per token (row), so the result is the same bit for bit on the torch path
  (tests/longcat/test_memory.py); only the temporaries shrink (the FFN's two ``[N, 11008]``
  halves were the largest tensors of a block).
* **The peak estimate** ``forward_peak_bytes``: the live tensors in the block's three phases
  (self-attention, cross-attention, FFN) for a given shape, BSA and cache, in units of the token
  stream ``U = B·N·C·itemsize``. ``LongCatVideoModel.memory_required`` reports it, so ComfyUI's partial
  loading leaves room for it.
* **KV-cache placement** ``choose_kv_placement``: the continuation cache stays on the GPU when it
  fits next to the forward's peak in the free memory, else it is kept in pinned CPU memory and
  streamed to the GPU one block ahead (``KVStreamer``).
"""

from dataclasses import dataclass

import torch

from ..kernels.gating import SLAB_BYTES
from ..kernels.op import head_group_size
from .options import TOKEN_CHUNK_KEY

# Tokens per slice of the chunked per-token work. 16k rows keep every GEMM large (M = 16384,
# K = 4096) while the FFN's temporaries stay ~0.7 GiB; at 480p (1560 tokens per frame) that is
# 10 frames per slice.
TOKEN_CHUNK = 16384


def token_chunk(opts: dict) -> int:
    """Tokens per slice for this forward: ``opts[TOKEN_CHUNK_KEY]`` or ``TOKEN_CHUNK``; 0 = off."""
    value = opts.get(TOKEN_CHUNK_KEY, TOKEN_CHUNK)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"transformer_options[{TOKEN_CHUNK_KEY!r}] must be an int >= 0, got {value!r}")
    return value


def frame_slices(batch: int, frames: int, per_frame: int, chunk: int):
    """``(batch slice, frame slice)`` pairs covering ``[batch, frames]`` in order: everything at
    once when it has at most ``chunk`` tokens (or ``chunk`` is 0), else one batch item and as many
    whole frames as fit in ``chunk`` tokens (at least one)."""
    if not chunk or batch * frames * per_frame <= chunk:
        return [(slice(None), slice(None))]
    step = max(1, chunk // per_frame)
    return [(slice(b, b + 1), slice(f, min(f + step, frames)))
            for b in range(batch) for f in range(0, frames, step)]


def per_frame_rows(fn, x: torch.Tensor, frames: int, chunk: int):
    """``fn(x_slice, batch_slice, frame_slice)`` over ``frame_slices`` of x ``[B, N, C]`` (N =
    frames·tokens per frame), each result ``[b, rows, out]`` written into one ``[B, N, out]``.

    ``fn`` must act on each token on its own (per-row ops; per-frame tensors it indexes with the
    slices it gets), so the slices give the same result as one call."""
    b, n, c = x.shape
    per_frame = n // frames
    slices = frame_slices(b, frames, per_frame, chunk)
    if len(slices) == 1:
        return fn(x, *slices[0])
    grid = x.view(b, frames, per_frame, c)
    out = None
    for bs, fs in slices:
        part = fn(grid[bs, fs].reshape(1, -1, c), bs, fs)
        if out is None:
            out = part.new_empty(b, n, part.shape[-1])
        out.view(b, frames, per_frame, -1)[bs, fs] = part.view(1, fs.stop - fs.start, per_frame, -1)
        del part
    return out


def kv_cache_bytes(depth: int, hidden: int, batch: int, cached_tokens: int, itemsize: int) -> int:
    """Bytes of a continuation KV cache: k and v ``[B, heads, tokens, D]`` for every block."""
    return 2 * depth * batch * cached_tokens * hidden * itemsize


@dataclass(frozen=True)
class ForwardShape:
    """One DiT forward as the estimate sees it (tokens after patchify)."""

    batch: int
    frames: int  # token frames in x (noise frames only with a KV cache)
    per_frame: int  # tokens per frame
    cached_frames: int = 0  # frames in a KV cache in front of x's keys
    bsa: bool = False
    split: bool = False  # conditioning frames in x (no cache): two attention cores, concatenated
    text_tokens: int = 512


def forward_peak_bytes(shape: ForwardShape, hidden: int = 4096, heads: int = 32, ffn_hidden: int = 11008,
                       itemsize: int = 2, chunk: int = TOKEN_CHUNK, fused: bool = True) -> int:
    """Peak bytes of activations one forward allocates on top of the weights (and of a KV cache
    the caller holds), as the forward is written here.

    ``fused``: the GPU path (fused norm/RoPE/SwiGLU kernels, q/k normalised in place); False: the
    torch path (CPU), whose RMSNorm, RoPE and SwiGLU make fp32 temporaries. Per block, in units
    of the token stream U = B·N·C·itemsize, the largest of three phases, all with the block's
    input x (1, held by the block loop while the block runs):

    * self-attention: qkv (3) and the core's output (1; dense: + 1 for a head merge copy; BSA:
      + one head group's K/V copies and fp32 pass state); with a KV cache [cache; k] and
      [cache; v] (2 × keys / queries; k is roped in place);
    * cross-attention: x after self-attention (1) and the output (1) + one slice's norm, q,
      attention output, merge copy, proj (5 × slice rows);
    * FFN: x after cross-attention (1) and the output (1) + one slice's norm, w1/w3 outputs and
      w2 output; without chunking the slice is everything and there is no separate output.

    Plus the text (y and the block's text k/v) and the fp32 RoPE tables. Checked against peaks
    measured on tiny DiTs (tests/longcat/test_memory.py, torch path) and on the GPU
    (bench/bench_dit_memory.py, fused path).
    """
    b, tokens = shape.batch, shape.frames * shape.per_frame
    unit = b * tokens * hidden * itemsize
    head_dim = hidden // heads
    key_tokens = (shape.cached_frames + shape.frames) * shape.per_frame
    slices = frame_slices(b, shape.frames, shape.per_frame, chunk)
    whole = len(slices) == 1
    rows = max((b if bs.start is None else 1) * _slice_len(fs, shape.frames) * shape.per_frame
               for bs, fs in slices)
    slice_unit = rows * hidden * itemsize

    attn = 1 + 3 + (2 * key_tokens / tokens if shape.cached_frames else 0)
    if shape.bsa:
        group = head_group_size(b, heads, tokens, key_tokens, head_dim, itemsize)
        attn += 1 + group * b * head_dim * (2 * key_tokens * itemsize + 4 * tokens) / unit
        attn += SLAB_BYTES / unit  # the gating's scores, slab by slab
    else:
        attn += 2
    if shape.split:
        attn += 1
    if not fused:  # q, k normalised out of place with fp32 temporaries, RoPE of q in fp32
        attn += 2 + 4 / 3 + 1
    attn *= unit
    cross = (2 if whole else 3) * unit + 5 * slice_unit
    ffn_parts = (1 if fused else 3) + 2 * ffn_hidden / hidden * (1 if fused else 2) + 1
    ffn = (2 if whole else 3) * unit + ffn_parts * slice_unit
    text = b * shape.text_tokens * hidden * itemsize * 3
    rope = 2 * key_tokens * head_dim * 4
    return int(max(attn, cross, ffn) + text + rope)


def _slice_len(fs: slice, frames: int) -> int:
    return (frames if fs.stop is None else fs.stop) - (fs.start or 0)


def choose_kv_placement(cache_bytes: int, free_bytes: int, forward_bytes: int) -> str:
    """"gpu" when the cache fits next to the forward's peak in ``free_bytes``, else "cpu"."""
    return "gpu" if cache_bytes + forward_bytes <= free_bytes else "cpu"


class KVStreamer:
    """Per-block KV cache held in (pinned) CPU memory, copied to ``device`` one block ahead.

    ``get(i)`` returns block i's (k, v) on the device and starts copying block i+1 on a side
    stream; the compute stream waits for each copy's event before using it. Without CUDA the
    copies are plain ``.to(device)`` (the path runs, no streams).
    """

    def __init__(self, cache: dict, device):
        self.cache, self.device = cache, torch.device(device)
        offloaded = any(k.device.type == "cpu" for k, _ in cache.values())
        self.stream = torch.cuda.Stream(self.device) if offloaded and self.device.type == "cuda" else None
        self._ahead = {}

    def _start(self, i):
        if i in self._ahead or i not in self.cache:
            return
        k, v = self.cache[i]
        if self.stream is None:
            self._ahead[i] = (k.to(self.device), v.to(self.device), None)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            kd, vd = k.to(self.device, non_blocking=True), v.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self._ahead[i] = (kd, vd, event)

    def get(self, i):
        self._start(i)
        k, v, event = self._ahead.pop(i)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            k.record_stream(current)  # allocated on the side stream, used on the compute stream
            v.record_stream(current)
        self._start(i + 1)
        return k, v


def pin(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``tensor`` in pinned memory when CUDA is there (async copies), else plain."""
    if torch.cuda.is_available():
        out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        out.copy_(tensor)
        return out
    return tensor.to("cpu")

