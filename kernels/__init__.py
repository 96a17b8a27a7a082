"""Block-sparse attention kernels (LongCat-Video BSA): one public call and its report.

Pure torch + (lazily) triton; imports neither the model package nor ComfyUI.
"""

from .api import BSAReport, block_sparse_attention, check_parameters, choose_backend

__all__ = ["BSAReport", "block_sparse_attention", "check_parameters", "choose_backend"]
