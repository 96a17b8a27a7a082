"""Test setup shared by every layer.

* Registers the pack as the package ``longcat_pack`` (see ``_standalone.py``); tests import
  ``longcat_pack.kernels``, ``longcat_pack.longcat``, ``longcat_pack.nodes``.
* Puts ``harness/`` (what tests and benches share: the ComfyUI server runner, tiny model files,
  Kijai-layout files, workflow checks) on ``sys.path``.
* Without CUDA, Triton kernels run in the interpreter (``TRITON_INTERPRET=1``). This must be set
  before triton is first imported, hence here.
"""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
from _standalone import import_pack

import_pack()
