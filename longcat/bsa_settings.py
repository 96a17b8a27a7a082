"""BSA settings carried by a MODEL: what the DiT's self-attention reads to go block-sparse.

A ``BSASettings`` sits in ``transformer_options[options.BSA_OPTIONS_KEY]``; the DiT uses block-sparse
attention for self-attention when it is present, the latent grid has T > 1, the block
is not listed in ``dense_blocks`` and the current sigma lies in ``[sigma_min, sigma_max]``.
Frozen so a cloned MODEL can share it safely. Imports nothing from ComfyUI.
"""

import math
from dataclasses import dataclass, field

# Published LongCat-Video values (dit/config.json "bsa_params").
PUBLISHED_SPARSITY = 0.9375
PUBLISHED_CHUNK = (4, 4, 4)
BACKENDS = ("auto", "triton", "torch")



@dataclass(frozen=True)
class BSASettings:
    """Block-sparse attention parameters for the LongCat DiT.

    sparsity: fraction of key chunks dropped, in [0, 1). K = floor((1 - sparsity) * Nk), K >= 1.
    cdf_threshold: None (top-K only) or in (0, 1]; with both, the larger block count wins.
    chunk_3d_shape_q / chunk_3d_shape_k: (t, h, w) chunk of the token grid, each >= 1.
    backend: "auto" (Triton on CUDA, else torch reference), "triton" or "torch".
    sigma_max / sigma_min: BSA runs only while sigma_min <= sigma <= sigma_max.
    dense_blocks: indices of DiT blocks that always use dense attention.
    """

    sparsity: float = PUBLISHED_SPARSITY
    cdf_threshold: float | None = None
    chunk_3d_shape_q: tuple[int, int, int] = PUBLISHED_CHUNK
    chunk_3d_shape_k: tuple[int, int, int] = PUBLISHED_CHUNK
    backend: str = "auto"
    sigma_max: float = math.inf
    sigma_min: float = -math.inf
    dense_blocks: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.cdf_threshold is not None and not 0.0 < self.cdf_threshold <= 1.0:
            raise ValueError(f"cdf_threshold must be None or in (0, 1], got {self.cdf_threshold}")
        for name in ("chunk_3d_shape_q", "chunk_3d_shape_k"):
            chunk = tuple(getattr(self, name))
            if len(chunk) != 3 or any(int(c) < 1 for c in chunk):
                raise ValueError(f"{name} must be three integers >= 1, got {chunk}")
            object.__setattr__(self, name, tuple(int(c) for c in chunk))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        object.__setattr__(self, "dense_blocks", frozenset(int(b) for b in self.dense_blocks))

    @property
    def has_step_window(self) -> bool:
        """Whether BSA is limited to a sigma range (else the current sigma is never needed)."""
        return self.sigma_min > -math.inf or self.sigma_max < math.inf

    def applies(self, block_index: int, sigma: float | None) -> bool:
        """Whether block ``block_index`` at ``sigma`` (None: unknown, treated as inside) is sparse."""
        if block_index in self.dense_blocks:
            return False
        return sigma is None or self.sigma_min <= sigma <= self.sigma_max

    def kernel_kwargs(self) -> dict:
        """Keyword arguments for ``kernels.block_sparse_attention``."""
        return {
            "sparsity": self.sparsity,
            "cdf_threshold": self.cdf_threshold,
            "chunk_3d_shape_q": self.chunk_3d_shape_q,
            "chunk_3d_shape_k": self.chunk_3d_shape_k,
            "backend": self.backend,
        }
