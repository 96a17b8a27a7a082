"""The pack's ``__init__``: V3 entry point on a ComfyUI that loads it, one clear log line and no
nodes on an older one (whose loader would otherwise skip the pack with a NODE_CLASS_MAPPINGS
warning). Each case imports the pack in a fresh process, the way ComfyUI does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Stand-ins for what ComfyUI's main.py has imported before it loads custom nodes.
IMPORT_AS_COMFYUI = """
import json, logging, sys, types
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger().addHandler(Keep())
version, inside = json.loads(sys.argv[2])
if version is not None:
    sys.modules["comfyui_version"] = types.SimpleNamespace(__version__=version)
if inside:
    sys.modules["folder_paths"] = types.ModuleType("folder_paths")
sys.path.insert(0, sys.argv[1])
from _standalone import import_pack
pack = import_pack()
print(json.dumps({"entrypoint": callable(getattr(pack, "comfy_entrypoint", None)),
                  "mappings": getattr(pack, "NODE_CLASS_MAPPINGS", None), "log": records,
                  "heavy": sorted(m for m in ("torch", "triton", "comfy") if m in sys.modules)}))
"""


def _import(version, inside=True) -> dict:
    done = subprocess.run([sys.executable, "-c", IMPORT_AS_COMFYUI, str(ROOT),
                           json.dumps([version, inside])],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("version", ["0.3.60", "0.3.64", "0.8.0", "0.33.0", "v1.0.0"])
def test_supported_comfyui_gets_the_v3_entrypoint(version):
    result = _import(version)
    assert result == {"entrypoint": True, "mappings": None, "log": [], "heavy": []}


@pytest.mark.parametrize("version, shown", [("0.3.59", "0.3.59"), ("0.3.47", "0.3.47"), ("0.3.9", "0.3.9"),
                                            (None, "older than 0.3.11")])
def test_older_comfyui_gets_one_clear_line_and_no_nodes(version, shown):
    result = _import(version)
    assert not result["entrypoint"] and result["mappings"] == {}
    assert result["log"] == [["ERROR", f"LongCat-Video needs ComfyUI 0.3.60 or newer; "
                                       f"this is ComfyUI {shown}: update ComfyUI and restart. "
                                       "No LongCat nodes were loaded."]]


def test_outside_comfyui_the_pack_imports_quietly():
    assert _import(None, inside=False) == {"entrypoint": True, "mappings": None, "log": [],
                                           "heavy": []}


def test_minimum_version_is_stated_once_everywhere():
    """pyproject's requires-comfyui (registry, Manager) and the README say what __init__ checks."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    from longcat_pack import MIN_COMFYUI

    minimum = ".".join(map(str, MIN_COMFYUI))
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["requires-comfyui"] == f">={minimum}"
    assert f"Needs ComfyUI {minimum} or newer" in (ROOT / "README.md").read_text()
