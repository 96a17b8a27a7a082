"""CPU check of every bundled workflow against the recorded ``tests/data/object_info.json``.

Node types, widget counts and values (with the frontend's control/upload extras), socket
types, links and ``properties.models`` are checked by ``workflow_checks``; the defaults each
workflow promises (sizes, steps, guidance, LoRAs, BSA) by ``workflow_expectations``. Missing
inputs fail: a missing snapshot or workflow is an error, never a vacuous pass.
"""

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OBJECT_INFO = ROOT / "tests" / "data" / "object_info.json"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_wf_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wc = _load("workflow_checks")
wx = _load("workflow_expectations")


@pytest.fixture(scope="module")
def object_info() -> dict:
    info = wc.load_json(OBJECT_INFO)
    assert any(k.startswith("LongCat") for k in info), f"{OBJECT_INFO} lists no LongCat nodes"
    return info


def test_bundled_set_is_complete():
    """Exactly the documented workflows ship; none is missing, none is undocumented."""
    found = sorted(p.name for p in (ROOT / "workflows").glob("*.json"))
    assert found == sorted(wx.EXPECTED), f"workflows/ holds {found}, expected {sorted(wx.EXPECTED)}"


@pytest.mark.parametrize("name", sorted(wx.EXPECTED))
def test_workflow_structure(name, object_info):
    workflow = wc.load_json(ROOT / "workflows" / name)
    problems = wc.check_workflow(workflow, object_info)
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(wx.EXPECTED))
def test_workflow_defaults(name, object_info):
    workflow = wc.load_json(ROOT / "workflows" / name)
    problems = wx.EXPECTED[name](wx.Graph(workflow, object_info))
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(wx.EXPECTED))
def test_workflow_has_vram_note(name):
    workflow = wc.load_json(ROOT / "workflows" / name)
    notes = [" ".join(map(str, n.get("widgets_values") or [])) for n in workflow["nodes"]
             if n["type"] in wc.NOTE_TYPES]
    assert any("VRAM" in text for text in notes), f"{name}: no note mentions VRAM"


def _shift_widget(workflow: dict, node_type: str) -> dict:
    broken = json.loads(json.dumps(workflow))
    node = next(n for n in broken["nodes"] if n["type"] == node_type)
    node["widgets_values"] = node["widgets_values"][:-1]
    return broken


def test_validator_catches_errors(object_info):
    """The checker is not vacuous: each kind of damage is reported."""
    workflow = wc.load_json(ROOT / "workflows" / "longcat_t2v_480p.json")
    assert not wc.check_workflow(workflow, object_info)
    unknown = json.loads(json.dumps(workflow))
    unknown["nodes"][0]["type"] = "NoSuchNodeXYZ"
    assert any("NoSuchNodeXYZ" in p for p in wc.check_workflow(unknown, object_info))
    assert any("widgets_values" in p
               for p in wc.check_workflow(_shift_widget(workflow, "LongCatSampler"), object_info))
    relinked = json.loads(json.dumps(workflow))
    relinked["links"][0][5] = "NOT_A_TYPE"
    assert any("type" in p for p in wc.check_workflow(relinked, object_info))
    unlinked = json.loads(json.dumps(workflow))
    unlinked["links"].pop()
    assert any("dangling" in p or "not connected" in p
               for p in wc.check_workflow(unlinked, object_info))


def test_expectations_catch_wrong_defaults(object_info):
    """The default checks are not vacuous: a changed step count or BSA setting is reported."""
    workflow = wc.load_json(ROOT / "workflows" / "longcat_t2v_refine_720p_bsa.json")
    assert not wx.t2v_refine(wx.Graph(workflow, object_info))
    steps = json.loads(json.dumps(workflow))
    sched = next(n for n in steps["nodes"] if n["type"] == "LongCatScheduler")
    sched["widgets_values"][1] = 20
    assert any("steps" in p for p in wx.t2v_refine(wx.Graph(steps, object_info)))
    dense = json.loads(json.dumps(workflow))
    bsa = next(n for n in dense["nodes"] if n["type"] == "LongCatBSASettings")
    bsa["widgets_values"][0] = False
    assert any("BSA enable" in p for p in wx.t2v_refine(wx.Graph(dense, object_info)))
