"""The real ComfyUI frontend loads every bundled workflow without missing-node or widget errors.

For each ``workflows/*.json`` a fresh browser context opens the frontend served by ComfyUI, loads
the file with ``app.loadGraphData`` and checks, from the frontend's own state:

* missing node types: the list the frontend passes to ``afterConfigureGraph`` (the one behind the
  "Some Nodes Are Missing" dialog) and placeholder nodes of unregistered types are both empty;
  nodes the frontend flags with errors (``has_errors``, 1.40+: a file the server lacks) are all
  file loaders;
* widgets: after loading, every node serialises the same ``widgets_values`` as the file (the
  frontend rewrites values it cannot place or that are invalid); a newer frontend's own widgets
  on stock nodes (PreviewAny's preview toggles since 1.35) are tolerated, see ``comfy_drift``;
* the prompt the frontend would queue (``app.graphToPrompt``) equals comfy-cli's conversion;
* the "Missing Models" dialog (the server has no model files) lists exactly the files declared
  in ``properties.models``, each downloadable (no frontend error such as a bad folder or source);
* no two nodes overlap once the frontend has sized and drawn them (a newer ComfyUI may give a
  stock node more widgets, and the frontend grows it over its neighbour).

A screenshot of each graph goes to ``out/screenshots/frontend-<version>/<workflow>.png``.
"""

import json
import os
from pathlib import Path

import availability
import pytest
from comfy_drift import frontend_default, widget_changes

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
SCREENSHOTS = ROOT / "out" / "screenshots"
VIEWPORT = {"width": 2400, "height": 1350}
# Nodes that load a model or input file: a newer frontend flags them (``has_errors``) when the
# server lacks the file, as this test server does.
FILE_LOADERS = {"LongCatModelLoader", "LongCatLoRA", "CLIPLoader", "VAELoader", "UNETLoader",
                "LoraLoaderModelOnly", "LoadImage", "LoadVideo", "LoadAudio", "AudioEncoderLoader",
                "LongCatAvatarModelLoader"}
EMPTY_GRAPH = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [],
               "config": {}, "extra": {}, "version": 0.4}
# The frontend restores localStorage.workflow at start-up: an empty graph means no default
# graph and no template dialog.
INIT_SCRIPT = f"localStorage.setItem('workflow', {json.dumps(json.dumps(EMPTY_GRAPH))});"
APP_READY = """() => !!(window.app && app.graph && app.canvas && window.LiteGraph
    && Object.keys(LiteGraph.registered_node_types).length > 0
    && app.extensionManager?.workflow?.activeWorkflow)"""
LOAD_AND_INSPECT = """async ([workflow, name]) => {
    let missing = null;
    app.registerExtension({
        name: "longcat-missing-node-probe." + Date.now() + Math.random(),
        afterConfigureGraph(list) { missing = list.map(m => typeof m === "object" ? m.type : m); },
    });
    await app.loadGraphData(workflow, true, true, name);
    const nodes = app.graph.serialize().nodes;
    return {
        missing,
        placeholders: app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
        flagged: app.graph.nodes.filter(n => n.has_errors).map(n => n.type),
        widgets: Object.fromEntries(nodes.map(n => [n.id, n.widgets_values ?? []])),
        widgetNames: Object.fromEntries(app.graph.nodes.map(n => [n.id, (n.widgets ?? []).map(w => w.name)])),
        prompt: (await app.graphToPrompt()).output,
    };
}"""
# Missing models: frontends up to 1.35 show a dialog; 1.40+ a "Missing Models" section in the
# issues panel that the error overlay's button opens (each entry: name, folder, Download).
MISSING_MODELS = """async () => {
    const dialog = [...document.querySelectorAll('.comfy-missing-models li')];
    if (dialog.length) return {kind: "dialog", items: dialog.map(li => ({
        label: li.querySelector('span')?.innerText.trim(),
        error: li.querySelector('.p-message')?.innerText ?? null}))};
    const button = document.querySelector('[data-testid=error-overlay-see-errors]');
    if (!button) return {kind: "none", items: []};
    button.click();
    await new Promise(resolve => setTimeout(resolve, 1500));
    const section = [...document.querySelectorAll('section')].find(s => /Missing Models/.test(s.innerText));
    if (!section) return {kind: "panel without a Missing Models section", items: []};
    return {kind: "panel", items: [...section.querySelectorAll('div.mb-1')].map(entry => {
        const lines = entry.innerText.split('\\n').map(t => t.trim()).filter(Boolean);
        return {name: lines[0], directory: lines[1], download: lines.includes('Download')};
    })};
}"""
FIT_AND_DRAW = """() => {
    const rects = [...app.canvas.positionableItems].map(item => item.boundingRect);
    const x0 = Math.min(...rects.map(r => r[0])), y0 = Math.min(...rects.map(r => r[1]));
    const x1 = Math.max(...rects.map(r => r[0] + r[2])), y1 = Math.max(...rects.map(r => r[1] + r[3]));
    app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom: 0.95});
    app.canvas.min_font_size_for_lod = 0;  // draw text at any zoom (LiteGraph's LOD switch)
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
}"""


NODE_RECTS = """() => app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title,
    rect: Array.from(n.boundingRect)}))"""


def _overlaps(nodes: list[dict]) -> list[str]:
    """Pairs of nodes whose drawn rectangles (title bar included) intersect."""
    found = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["rect"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["rect"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append(f"{a['id']} {a['title']!r} and {b['id']} {b['title']!r}")
    return found


def _open_frontend(chromium, server):
    context = chromium.new_context(viewport=VIEWPORT)
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_function(APP_READY, timeout=90_000)
    # COMFYUI_FRONTEND_VERSION: the version this run must be testing (CI's second browser run).
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    expected = os.environ.get("COMFYUI_FRONTEND_VERSION")
    assert expected in (None, version), f"frontend {version} served, {expected} expected"
    page.evaluate("() => app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
    return context, page


def _declared_models(workflow: dict) -> set[str]:
    return {f"{m['directory']} / {m['name']}" for n in workflow["nodes"]
            for m in (n.get("properties") or {}).get("models", [])}


def _screenshot(page, name: str) -> Path:
    page.wait_for_timeout(700)  # dialog open animation
    for _ in range(3):
        page.keyboard.press("Escape")  # closes the top dialog only
    page.evaluate(FIT_AND_DRAW)
    page.wait_for_timeout(500)
    folder = SCREENSHOTS / f"frontend-{page.evaluate('() => window.__COMFYUI_FRONTEND_VERSION__')}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_frontend_loads_workflow(path, chromium, frontend_server):
    workflow = json.loads(path.read_text())
    context, page = _open_frontend(chromium, frontend_server)
    try:
        state = page.evaluate(LOAD_AND_INSPECT, [workflow, path.name])
        page.wait_for_timeout(1000)  # the Missing Models dialog renders after the load
        missing_models = page.evaluate(MISSING_MODELS)
        shot = _screenshot(page, path.stem)
        rects = page.evaluate(NODE_RECTS)
    finally:
        context.close()
    assert state["missing"] == [], f"missing node types: {state['missing']}"
    assert state["placeholders"] == [], f"placeholder (unknown type) nodes: {state['placeholders']}"
    # Frontend 1.40+ flags nodes whose file the server lacks (no model files, no input media).
    flagged = set(state["flagged"]) - FILE_LOADERS
    assert not flagged, f"nodes flagged with errors that load no file: {flagged}"
    object_info = frontend_server.get("/object_info")
    changed = {}
    for node in workflow["nodes"]:
        key = str(node["id"])
        why = ("missing after loading" if key not in state["widgets"] else
               widget_changes(node, state["widgets"][key], state["widgetNames"][key],
                              object_info.get(node["type"])))
        if why:
            changed[f"{node['id']} ({node['type']})"] = why
    assert not changed, f"widgets changed by the frontend: {changed}"
    _check_missing_models(missing_models, workflow)
    assert shot.stat().st_size > 50_000, f"{shot} looks empty"
    assert len(rects) == len(workflow["nodes"]), rects
    assert not _overlaps(rects), f"overlapping nodes ({shot}): {_overlaps(rects)}"
    convert = availability.import_or_unavailable("comfy_cli.workflow_to_api",
                                                 "pip install comfy-cli").convert_ui_to_api
    expected = _schema_inputs(convert(workflow, object_info), object_info)
    got = _without_new_stock_widgets(_schema_inputs(state["prompt"], object_info), expected,
                                     object_info)
    assert got == expected, "the frontend's prompt differs from comfy-cli's conversion"


def _check_missing_models(found: dict, workflow: dict) -> None:
    """The frontend lists exactly the declared model files, each downloadable; a 1.40+ panel may
    also list the DiT loader's file, which has no download (no single official file)."""
    items = found["items"]
    if found["kind"] == "dialog":
        assert {m["label"] for m in items} == _declared_models(workflow), items
        assert all(m["error"] is None for m in items), items
        return
    assert found["kind"] == "panel", f"no missing-models list found in the frontend ({found['kind']})"
    listed = {f"{m['directory']} / {m['name']}" for m in items if m["download"]}
    assert listed == _declared_models(workflow), items
    dit_files = {n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "LongCatModelLoader"}
    assert {m["name"] for m in items if not m["download"]} <= dit_files, items


def _without_new_stock_widgets(frontend: dict, converted: dict, object_info: dict) -> dict:
    """The frontend's prompt without stock-node inputs that comfy-cli does not send and that
    hold the value the frontend gives a new widget (1.58.1 sends 0.33's hidden SaveVideo
    ``codec`` at its first option; the server reads ``format.codec`` first)."""
    out = json.loads(json.dumps(frontend))
    for node_id, node in out.items():
        if node["class_type"].startswith("LongCat") or node_id not in converted:
            continue
        spec = object_info[node["class_type"]]["input"]
        specs = {**spec.get("required", {}), **spec.get("optional", {})}
        for name in set(node["inputs"]) - set(converted[node_id]["inputs"]):
            if frontend_default(specs[name]) == node["inputs"][name]:
                del node["inputs"][name]
    return out


def _schema_inputs(prompt: dict, object_info: dict) -> dict:
    """class_type and the inputs the server reads (the frontend also sends display-only widget
    values, e.g. PreviewAny's ``preview``, which the server ignores)."""
    out = {}
    for node_id, node in prompt.items():
        spec = object_info[node["class_type"]]["input"]
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        out[node_id] = {"class_type": node["class_type"],
                        "inputs": {k: v for k, v in node["inputs"].items() if k in names}}
    return out


def test_frontend_reports_a_missing_node(chromium, frontend_server):
    """Control: the same checks flag a node type the server does not have."""
    workflow = json.loads(WORKFLOWS[0].read_text())
    workflow["nodes"][0]["type"] = "NoSuchLongCatNode"
    context, page = _open_frontend(chromium, frontend_server)
    try:
        state = page.evaluate(LOAD_AND_INSPECT, [workflow, "broken.json"])
    finally:
        context.close()
    assert state["missing"] == ["NoSuchLongCatNode"]
    assert state["placeholders"] == ["NoSuchLongCatNode"]
