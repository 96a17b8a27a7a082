"""CPU check of every bundled workflow against the recorded ``tests/data/object_info.json``.

Node types, widget counts and values (with the frontend's control/upload extras), socket
types, links and ``properties.models`` are checked by ``workflow_checks``; the defaults each
workflow promises (sizes, steps, guidance, LoRAs, BSA) by ``workflow_expectations``. Missing
inputs fail: a missing snapshot or workflow is an error, never a vacuous pass.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OBJECT_INFO = ROOT / "tests" / "data" / "object_info.json"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wx = _load("_wf_workflow_expectations", HERE / "workflow_expectations.py")
wc = wx.wc  # the workflow_checks module the expectations use (loaded once)


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


def _as_in_comfyui_033(object_info: dict) -> dict:
    """The snapshot with the stock-node changes of ComfyUI 0.33.0 (its /object_info entries,
    trimmed): CreateVideo's ``bit_depth`` widget, GetVideoComponents' two new outputs, SaveVideo's
    ``format`` as a dynamic combo whose option adds ``codec`` (and a hidden top-level ``codec``)."""
    info = json.loads(json.dumps(object_info))
    create = info["CreateVideo"]
    create["input"].setdefault("optional", {})["bit_depth"] = [
        "INT", {"default": 8, "min": 8, "max": 10, "step": 2, "display": "number"}]
    create["input_order"].setdefault("optional", []).append("bit_depth")
    components = info["GetVideoComponents"]
    components["output"] += ["INT", "COMBO"]
    components["output_name"] += ["bit_depth", "color_space"]
    codec = ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {"required": {}}},
                                                    {"key": "h264", "inputs": {"required": {}}}]}]
    save = info["SaveVideo"]
    save["input"]["required"]["format"] = ["COMFY_DYNAMICCOMBO_V3", {"options": [
        {"key": key, "inputs": {"required": {"codec": codec}}} for key in ("auto", "mp4", "webm")]}]
    save["input"]["optional"] = {"codec": [codec[0], {**codec[1], "hidden": True}]}
    del save["input"]["required"]["codec"]
    save["input_order"] = {"required": ["video", "filename_prefix", "format"], "optional": ["codec"]}
    return info


def test_checks_tolerate_what_a_newer_comfyui_adds_to_stock_nodes(object_info):
    """New stock widgets with defaults, new stock outputs and dynamic combos pass, and the API
    prompt carries the defaults and the dynamic combo's ``format.codec`` (as comfy-cli's)."""
    newer = _as_in_comfyui_033(object_info)
    for name in sorted(wx.EXPECTED):
        workflow = wc.load_json(ROOT / "workflows" / name)
        assert not wc.check_workflow(workflow, newer), name
    workflow = wc.load_json(ROOT / "workflows" / "longcat_video_continuation.json")
    prompt = wc.to_api_prompt(workflow, newer)
    inputs = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert inputs["CreateVideo"]["bit_depth"] == 8
    assert {k: v for k, v in inputs["SaveVideo"].items() if k != "video"} == {
        "filename_prefix": "LongCat/continuation", "format": "auto", "format.codec": "auto"}


def test_checks_stay_strict_about_our_nodes_and_bad_values(object_info):
    """Our nodes gaining a widget (even with a default) or an output fail; so does a dynamic
    combo value that is not one of its options."""
    workflow = wc.load_json(ROOT / "workflows" / "longcat_t2v_refine_720p_bsa.json")
    widened = _as_in_comfyui_033(object_info)
    sampler = widened["LongCatSampler"]
    sampler["input"].setdefault("optional", {})["extra"] = ["INT", {"default": 1}]
    sampler["input_order"].setdefault("optional", []).append("extra")
    assert any("LongCatSampler" in p and "widgets_values" in p
               for p in wc.check_workflow(workflow, widened))
    grown = _as_in_comfyui_033(object_info)
    grown["LongCatRefine720p"]["output"] = grown["LongCatRefine720p"]["output"] + ["INT"]
    assert any("LongCatRefine720p" in p and "outputs" in p for p in wc.check_workflow(workflow, grown))
    bad = json.loads(json.dumps(workflow))
    save = next(n for n in bad["nodes"] if n["type"] == "SaveVideo")
    save["widgets_values"][1:] = ["mov", "auto"]
    assert any("SaveVideo" in p for p in wc.check_workflow(bad, _as_in_comfyui_033(object_info)))
    save["widgets_values"][1:] = ["webm", "vp9"]
    assert any("'vp9' not in" in p for p in wc.check_workflow(bad, _as_in_comfyui_033(object_info)))


def test_expectations_catch_wrong_defaults(object_info):
    """The default checks are not vacuous: a changed step count or BSA setting is reported."""
    workflow = wc.load_json(ROOT / "workflows" / "longcat_t2v_refine_720p_bsa.json")
    assert not wx.t2v_refine(wx.Graph(workflow, object_info))
    steps = json.loads(json.dumps(workflow))
    sched = next(n for n in steps["nodes"] if n["type"] == "LongCatScheduler")
    sched["widgets_values"][1] = 20
    assert any("steps" in p for p in wx.t2v_refine(wx.Graph(steps, object_info)))
    unresampled = wc.load_json(ROOT / "workflows" / "longcat_video_continuation.json")
    assert not wx.continuation(wx.Graph(unresampled, object_info))
    target = next(n for n in unresampled["nodes"] if n["type"] == "LongCatContinueVideo")
    target["widgets_values"][-1] = 30.0
    link = next(e["link"] for e in target["inputs"] if e["name"] == "video_fps")
    target["inputs"] = [dict(e, link=None) if e["name"] == "video_fps" else e
                        for e in target["inputs"]]
    unresampled["links"] = [lk for lk in unresampled["links"] if lk[0] != link]
    problems = wx.continuation(wx.Graph(unresampled, object_info))
    assert any("video_fps" in p for p in problems) and any("target_fps" in p for p in problems)
    dense = json.loads(json.dumps(workflow))
    bsa = next(n for n in dense["nodes"] if n["type"] == "LongCatBSASettings")
    bsa["widgets_values"][0] = False
    assert any("BSA enable" in p for p in wx.t2v_refine(wx.Graph(dense, object_info)))


def test_workflows_match_their_generator():
    """workflows/*.json are generated by scripts/build_workflows.py from the recorded schemas;
    edit the generator (and rerun it), not the JSON."""
    build = _load("_wf_build", ROOT / "scripts" / "build_workflows.py")
    info = wc.load_json(OBJECT_INFO)
    stale = [name for name in build.WORKFLOWS
             if (ROOT / "workflows" / name).read_text() != build.render(name, info)]
    assert not stale, f"run `python scripts/build_workflows.py`; out of date: {stale}"


def test_generator_check_says_up_to_date():
    """`build_workflows.py --check` confirms success in words (it used to print nothing)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_workflows.py"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{len(wx.EXPECTED)} workflows up to date"


def test_registry_metadata_lists_the_workflows_model_files():
    """pyproject.toml's [tool.comfy] Models (what ComfyUI-Manager offers to download) names
    every file the workflows load, from the same URL."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    listed = {m["location"]: m["model_url"] for m in
              tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["Models"]}
    for name in wx.EXPECTED:
        for node in wc.load_json(ROOT / "workflows" / name)["nodes"]:
            for model in (node.get("properties") or {}).get("models", []):
                location = f"/{model['directory']}/{model['name']}"
                assert location in listed, f"{name}: {location} missing from pyproject.toml Models"
                assert listed[location] == model["url"].removesuffix("?download=true"), location


def test_workflows_default_to_downloadable_files():
    """Every model file a workflow loads has a download link (but the Avatar DiT, a sharded folder
    linked from its note); the LongCat-Video DiT is the file a 24 GB card runs (Kijai's scaled
    fp8, with --lowvram), never a file only the converter makes."""
    loaders = 0
    folder_only = {kind for kind, _ in wc.NO_DOWNLOAD}
    for name in wx.EXPECTED:
        workflow = wc.load_json(ROOT / "workflows" / name)
        for node in workflow["nodes"]:
            if node["type"] == "LongCatModelLoader":
                loaders += 1
                assert node["widgets_values"][0] == wx.DIT, (name, node["widgets_values"])
                assert [m["name"] for m in node["properties"]["models"]] == [wx.DIT], name
        named = {(n["type"], v) for n in workflow["nodes"] for v in n.get("widgets_values") or []
                 if isinstance(v, str) and v.endswith(".safetensors") and n["type"] not in folder_only}
        downloadable = {(n["type"], m["name"]) for n in workflow["nodes"]
                        for m in (n.get("properties") or {}).get("models", [])}
        assert named <= downloadable, (name, named - downloadable)
    assert loaders >= 7, loaders


def test_model_check_catches_missing_or_wrong_download(object_info):
    """check_models is not vacuous: no entry, another file's URL, a folder URL are reported."""
    workflow = wc.load_json(ROOT / "workflows" / "longcat_t2v_480p.json")
    loader = next(n for n in workflow["nodes"] if n["type"] == "LongCatModelLoader")
    info = object_info["LongCatModelLoader"]
    assert not wc.check_models(loader, info)
    for damage in ([], [{**loader["properties"]["models"][0], "url": "https://huggingface.co/"
                         "Kijai/LongCat-Video_comfy/resolve/main/other.safetensors"}],
                   [{**loader["properties"]["models"][0], "url": "https://huggingface.co/"
                     "meituan-longcat/LongCat-Video/tree/main/dit"}]):
        broken = json.loads(json.dumps(loader))
        broken["properties"]["models"] = damage
        assert wc.check_models(broken, info), damage
