"""BSA settings carried by a MODEL: what the DiT's self-attention reads to go block-sparse.

A ``BSASettings`` sits in ``transformer_options[options.BSA_OPTIONS_KEY]``; the DiT uses block-sparse
attention for self-attention when it is present, the latent grid has T > 1, the block
is not listed in ``dense_blocks`` and the current sigma lies in ``[sigma_min, sigma_max]``.
Frozen so a cloned MODEL can share it safely. Imports nothing from ComfyUI.
"""

import math
from dataclasses import dataclass, field

from ..kernels.api import check_parameters

# Published LongCat-Video values (dit/config.json "bsa_params").
PUBLISHED_SPARSITY = 0.9375
PUBLISHED_CHUNK = (4, 4, 4)



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
        # The kernel's own check (kernels.check_parameters), at build time, not first use.
        if self.sparsity is None:
            raise ValueError("sparsity must be a float in [0, 1)")
        chunk_q, chunk_k = check_parameters(self.sparsity, self.cdf_threshold, self.backend,
                                            self.chunk_3d_shape_q, self.chunk_3d_shape_k)
        object.__setattr__(self, "chunk_3d_shape_q", chunk_q)
        object.__setattr__(self, "chunk_3d_shape_k", chunk_k)
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
