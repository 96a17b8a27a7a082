"""The tolerant snapshot and widget checks (CPU, no ComfyUI): what a newer ComfyUI adds passes,
any change to our nodes is caught. Mutated copies of ``tests/data/object_info.json`` stand in
for the live server."""

import copy
import json
from pathlib import Path

import pytest
from comfy_drift import node_info_changes, widget_changes

SNAPSHOT = json.loads((Path(__file__).resolve().parents[1] / "data" / "object_info.json").read_text())
OURS = sorted(name for name in SNAPSHOT if name.startswith("LongCat"))
SAMPLER = SNAPSHOT["LongCatSampler"]


def _changed(mutate) -> list[str]:
    live = copy.deepcopy(SAMPLER)
    mutate(live)
    return node_info_changes(SAMPLER, live, "LongCatSampler")


def test_snapshot_lists_our_nodes():
    assert len(OURS) == 14, OURS


def test_fields_a_newer_comfyui_adds_are_tolerated():
    """ComfyUI 0.8.0: every V3 node gained ``output_matchtypes: null``; options may gain
    default-valued flags; a field dropped at its default value means the same."""
    for name in OURS:
        live = copy.deepcopy(SNAPSHOT[name])
        live["output_matchtypes"] = None
        live["search_aliases"] = []
        for spec in live["input"]["required"].values():
            spec[1]["advanced"] = False
        live.pop("deprecated")  # recorded as false
        assert node_info_changes(SNAPSHOT[name], live, name) == []


@pytest.mark.parametrize("mutate, where", [
    (lambda n: n["input"]["required"]["seed"][1].update(default=43), "seed"),
    (lambda n: n["input"]["required"]["seed"][1].update(tooltip="changed"), "tooltip"),
    (lambda n: n["input"]["required"].pop("seed"), "seed"),
    (lambda n: n["input"]["required"].update(extra=["INT", {"default": 0}]), "extra"),
    (lambda n: n["input_order"]["required"].reverse(), "input_order"),
    (lambda n: n["output"].append("LATENT"), "output"),
    (lambda n: n.update(category="LongCat/other"), "category"),
    (lambda n: n.update(output_matchtypes=[["T"]]), "output_matchtypes"),
    (lambda n: n["input"]["required"]["seed"][1].update(forceInput=True), "forceInput"),
    (lambda n: n["input"]["required"]["seed"].__setitem__(0, "FLOAT"), "seed"),
])
def test_any_change_to_our_node_is_caught(mutate, where):
    problems = _changed(mutate)
    assert problems and any(where in p for p in problems), problems


PREVIEW_ANY = {"id": 16, "type": "PreviewAny", "widgets_values": []}
# Frontend 1.35.9: PreviewAny gains a markdown and a text preview (not saved: null) and a toggle.
NEW_FRONTEND_PREVIEW = ([None, None, False], ["preview", "preview", "previewMode"])


def test_frontend_only_widgets_on_stock_nodes_are_tolerated():
    assert widget_changes(PREVIEW_ANY, *NEW_FRONTEND_PREVIEW, SNAPSHOT["PreviewAny"]) is None
    assert widget_changes(PREVIEW_ANY, [], [], SNAPSHOT["PreviewAny"]) is None


def test_stock_inputs_a_newer_comfyui_adds_at_their_default_are_tolerated():
    """ComfyUI 0.33 adds CreateVideo ``bit_depth`` (default 8): the frontend loads it at 8."""
    info = json.loads(json.dumps(SNAPSHOT["CreateVideo"]))
    info["input"].setdefault("optional", {})["bit_depth"] = ["INT", {"default": 8, "min": 8, "max": 10}]
    create = {"id": 4, "type": "CreateVideo", "widgets_values": [15.0]}
    assert widget_changes(create, [15.0, 8], ["fps", "bit_depth"], info) is None
    assert widget_changes(create, [15.0, 10], ["fps", "bit_depth"], info)
    # frontend 1.58.1 draws 0.33's hidden SaveVideo codec (a dynamic combo) at its first option
    save = json.loads(json.dumps(SNAPSHOT["SaveVideo"]))
    save["input"]["optional"] = {"codec": ["COMFY_DYNAMICCOMBO_V3", {"hidden": True, "options": [
        {"key": "auto", "inputs": {"required": {}}}, {"key": "h264", "inputs": {"required": {}}}]}]}
    node = {"id": 9, "type": "SaveVideo", "widgets_values": ["LongCat/x", "auto", "auto"]}
    names = ["filename_prefix", "format", "format.codec", "codec"]
    assert widget_changes(node, ["LongCat/x", "auto", "auto", "auto"], names, save) is None
    assert widget_changes(node, ["LongCat/x", "auto", "auto", "h264"], names, save)


def test_widget_changes_are_caught():
    sampler = {"id": 5, "type": "LongCatSampler", "widgets_values": [42, "fixed", 4.0, True, False]}
    names = ["seed", "control_after_generate", "guidance_scale", "use_kv_cache", "offload_kv_cache"]
    info = SNAPSHOT["LongCatSampler"]
    assert widget_changes(sampler, sampler["widgets_values"], names, info) is None
    # a value rewritten, a value dropped, a widget added to our node
    assert widget_changes(sampler, [42, "randomize", 4.0, True, False], names, info)
    assert widget_changes(sampler, [42, "fixed", 4.0, True], names[:4], info)
    assert widget_changes(sampler, [*sampler["widgets_values"], None], [*names, "preview"], info)
    # a stock node: an added widget that is one of its schema inputs is not frontend-only
    ksampler = {"id": 3, "type": "KSampler", "widgets_values": []}
    assert widget_changes(ksampler, [1], ["seed"], SNAPSHOT["KSampler"])
    # a stock node's saved value rewritten
    scale = {"id": 7, "type": "ImageScale", "widgets_values": ["nearest-exact", 64, 32, "disabled"]}
    assert widget_changes(scale, ["nearest-exact", 64, 64, "disabled"], [], SNAPSHOT["ImageScale"])
