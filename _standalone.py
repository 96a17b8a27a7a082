"""Import this pack outside ComfyUI (tests, bench, scripts) the way ComfyUI does.

ComfyUI imports the pack folder as one package under a mangled name, and our modules import each
other relatively (``from ..kernels import ...``). Outside ComfyUI we register the same package
under the fixed name ``longcat_pack`` so those relative imports resolve. The pack's
``__init__.py`` imports nothing heavy, so this needs neither ComfyUI nor a GPU.
"""

import importlib.util
import sys
from pathlib import Path

PACK_NAME = "longcat_pack"
PACK_ROOT = Path(__file__).resolve().parent


def import_pack():
    """Return the pack as the package ``longcat_pack`` (registered once per process)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
