"""The model loader's ``weight_dtype`` widget: its choices and the torch dtype each means.

Imports no ComfyUI (the CPU tests cover it without a ComfyUI tree).
"""

import torch

from ..longcat.convert import DTYPE_NAMES

# The loader widget's choices: "default" plus names of convert.DTYPE_NAMES (the converter's --dtype).
WEIGHT_DTYPES = ("default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2")


def weight_dtype_option(name: str) -> torch.dtype | None:
    """Map the loader's ``weight_dtype`` widget to a torch dtype (None = ComfyUI's choice)."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {name!r}")
    return None if name == "default" else DTYPE_NAMES[name]
