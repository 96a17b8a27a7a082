"""What BSA did during one sampling run, as the sampler nodes report it (``BSARunLog``).

Imports no ComfyUI (the CPU tests cover it without a ComfyUI tree).
"""

from collections import Counter

import torch

class BSARunLog:
    """Per-run record of what BSA did; the DiT calls ``record`` after each BSA call.

    Keeps running aggregates only. Numbers stay tensors on the kernel's device until
    ``summary`` reads them, so recording never waits on the GPU (one sync per run, not per call).
    """

    def __init__(self):
        self.calls = 0
        self.blocks = set()
        self.paths = Counter()
        self.padded = 0
        self.key_chunks = set()
        self.kept_count = 0
        self._density = None  # tensors: sum, min, max over calls
        self._kept = None  # tensors: sum, min, max of key chunks kept per query chunk

    def record(self, block_index, report) -> None:
        """Add one ``kernels.BSAReport`` from DiT block ``block_index``."""
        self.calls += 1
        if block_index is not None:
            self.blocks.add(int(block_index))
        self.paths[(report.backend, report.reason)] += 1
        self.padded += bool(report.padded)
        self.key_chunks.add(int(report.num_key_chunks))
        density = report.kept_key_tokens.double().mean() / report.num_key_tokens
        kept = report.blocks_per_query_chunk.double()
        self.kept_count += kept.numel()
        self._density = _accumulate(self._density, density, density, density)
        self._kept = _accumulate(self._kept, kept.sum(), kept.min(), kept.max())

    def summary(self) -> str:
        """Readable summary: calls, blocks, density, kept chunks, kernel paths and reasons."""
        if self.calls == 0:
            return ("BSA: no block-sparse attention ran (disabled, no BSA settings on the MODEL, "
                    "one latent frame, or every step/block outside the window).")
        nk = ",".join(str(n) for n in sorted(self.key_chunks))
        density_sum, density_min, density_max = (float(t) for t in self._density)
        kept_sum, kept_min, kept_max = (float(t) for t in self._kept)
        lines = [
            f"BSA: {self.calls} sparse self-attention calls over {len(self.blocks)} blocks.",
            f"density (kept key tokens / key tokens): mean {density_sum / self.calls:.4f}, "
            f"min {density_min:.4f}, max {density_max:.4f}.",
            f"kept key chunks per query chunk: mean {kept_sum / max(self.kept_count, 1):.1f}, "
            f"min {kept_min:.0f}, max {kept_max:.0f} (of {nk} key chunks).",
            f"padded grids: {self.padded} of {self.calls} calls.",
        ]
        for (backend, reason), count in sorted(self.paths.items()):
            lines.append(f"kernel {backend} x{count}: {reason}")
        return "\n".join(lines)


def _accumulate(totals, add, low, high):
    """Running (sum, min, max) of device tensors, without reading them back."""
    if totals is None:
        return add, low, high
    return totals[0] + add, torch.minimum(totals[1], low), torch.maximum(totals[2], high)
