"""Structural checks of UI-format (frontend) workflows against an ``/object_info`` snapshot.

Used by the CPU tests (against the recorded ``tests/data/object_info.json``) and by the
real-ComfyUI tests (against the live server). Pure Python; imports neither torch nor ComfyUI.

A workflow passes when the frontend would load it without missing-node or widget errors and
``/prompt`` would accept its API form: every node type exists, every node's
``widgets_values`` has exactly the frontend's widget count with valid values, every link joins
an existing output to an existing input of a matching type, every required socket is
connected, and every loader node names its files in ``properties.models``.

Strict about our nodes (``LongCat*``), tolerant of what a newer ComfyUI adds to stock nodes:
trailing widgets with a default that the file does not hold yet (0.33's ``CreateVideo``
``bit_depth``; the frontend and ``to_api_prompt`` fill in the default), trailing outputs
(0.33's ``GetVideoComponents``), and dynamic combos (0.33's ``SaveVideo`` ``format``, whose
selected option adds widgets named ``format.codec``, ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OUR_PREFIX = "LongCat"
# A V3 combo whose selected option adds its own inputs (ComfyUI 0.33's SaveVideo ``format``).
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
# Types the frontend registers itself; they never reach /object_info or /prompt.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
# Combo options that add an upload button widget, whose value the frontend serialises.
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
SCALAR_WIDGETS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})
# Combo widgets that list model files, per node type. The snapshot is recorded on a server
# without model files (empty lists), so their values are checked against properties.models.
MODEL_FILE_INPUTS = {
    "CLIPLoader": {"clip_name"}, "VAELoader": {"vae_name"}, "UNETLoader": {"unet_name"},
    "LoraLoaderModelOnly": {"lora_name"}, "LongCatModelLoader": {"model_name"},
    "LongCatLoRA": {"lora_name"},
}
# Combo widgets that list files in ComfyUI's input/ folder (any file name is accepted here).
MEDIA_FILE_INPUTS = {"LoadImage": {"image"}, "LoadVideo": {"file"}}
MODEL_DIRECTORIES = frozenset({"diffusion_models", "loras", "text_encoders", "vae"})
HF_PREFIX = "https://huggingface.co/"
# Model files with no single-file download; their loader's note gives the link instead.
NO_DOWNLOAD: set[tuple[str, str]] = set()
# A direct download of one file: https://huggingface.co/<owner>/<repo>/resolve/main/<path>
# (optionally with Hugging Face's ``?download=true``).
HF_FILE_URL = re.compile(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/(?:[\w.-]+/)*([\w.-]+)"
                         r"(?:\?download=true)?")
# Avatar: the stock audio loaders; the Avatar DiT ships as a sharded folder (link in its note).
MODEL_FILE_INPUTS.update({"AudioEncoderLoader": {"audio_encoder_name"}, "LongCatAvatarModelLoader": {"model_name"}})
MEDIA_FILE_INPUTS.update({"LoadAudio": {"audio"}})
NO_DOWNLOAD |= {("LongCatAvatarModelLoader", "model_name")}
MODEL_DIRECTORIES |= {"audio_encoders"}


def load_json(path: Path) -> dict:
    """Read one JSON file; a missing file is an error, never an empty result."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text(encoding="utf-8"))


def _spec_type_and_options(spec: list) -> tuple[object, dict]:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], opts


def combo_options(spec: list) -> list | None:
    """The choices of a combo input spec (V1 ``[[...]]``, V3 ``["COMBO", {options}]``, or the
    option keys of a dynamic combo), else None."""
    kind, opts = _spec_type_and_options(spec)
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(opts.get("options", []))
    if kind == DYNAMIC_COMBO:
        return [option["key"] for option in opts.get("options", [])]
    return None


def is_widget(spec: list) -> bool:
    """Whether the frontend draws this input as a widget (a value in widgets_values); hidden V3
    inputs (0.33's SaveVideo ``codec``, kept for old API prompts) get none."""
    kind, opts = _spec_type_and_options(spec)
    if opts.get("hidden"):
        return False
    if combo_options(spec) is not None:
        return True
    return kind in SCALAR_WIDGETS and not opts.get("forceInput", False)


def _selected_inputs(spec: list, value) -> list[tuple[str, list, bool]]:
    """``(name, spec, required)`` of the inputs a dynamic combo's selected option adds."""
    _, opts = _spec_type_and_options(spec)
    for option in opts.get("options", []):
        if option["key"] == value:
            inputs = option.get("inputs") or {}
            return [(name, sub, section == "required") for section in ("required", "optional")
                    for name, sub in (inputs.get(section) or {}).items()]
    return []


def widget_layout(node: dict, info: dict) -> list[tuple[str, list, int]]:
    """``(name, spec, index into widgets_values)`` of each widget of ``node`` in the frontend's
    order. A dynamic combo's selected option (the file's value) adds its widgets right after
    it, named ``parent.child`` as in the API prompt."""
    values = list(node.get("widgets_values") or [])
    layout, index = [], 0

    def walk(inputs, prefix):
        nonlocal index
        for name, spec, _ in inputs:
            if not is_widget(spec):
                continue
            layout.append((prefix + name, spec, index))
            value = values[index] if index < len(values) else None
            index += widget_slots(name, spec)
            if _spec_type_and_options(spec)[0] == DYNAMIC_COMBO:
                walk(_selected_inputs(spec, value), f"{prefix}{name}.")

    walk(ordered_inputs(info), "")
    return layout


_NO_DEFAULT = object()


def input_default(spec: list):
    """What comfy-cli's converter sends for an input the file holds no value for: the spec's
    default, else a combo's first option (not a dynamic combo's); ``_NO_DEFAULT`` otherwise."""
    kind, opts = _spec_type_and_options(spec)
    if "default" in opts:
        return opts["default"]
    options = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
    return options[0] if options else _NO_DEFAULT


def _has_default(spec: list) -> bool:
    return input_default(spec) is not _NO_DEFAULT


def widget_slots(name: str, spec: list) -> int:
    """How many widgets_values entries one widget input takes in the saved workflow.

    The frontend adds a ``control_after_generate`` combo after INT inputs that ask for it or
    are named ``seed``/``noise_seed`` (legacy rule), and an upload button after upload combos.
    """
    kind, opts = _spec_type_and_options(spec)
    extra = 0
    if opts.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
        extra += 1
    if combo_options(spec) is not None and any(opts.get(flag) for flag in UPLOAD_FLAGS):
        extra += 1
    return 1 + extra


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """``(name, spec, required)`` for each required then optional input, in the node's order."""
    out = []
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        order = info.get("input_order", {}).get(section, list(specs))
        out.extend((name, specs[name], section == "required") for name in order)
    return out


def widget_values_by_name(node: dict, info: dict) -> dict:
    """Map widget name -> value for the widgets the file holds a value for
    (control_after_generate/upload entries dropped, dynamic-combo widgets as ``parent.child``)."""
    values = list(node.get("widgets_values") or [])
    return {name: values[i] for name, _, i in widget_layout(node, info) if i < len(values)}


def _check_value(where: str, name: str, spec: list, value, file_inputs: set) -> list[str]:
    kind, opts = _spec_type_and_options(spec)
    options = combo_options(spec)
    if options is not None:
        if name in file_inputs:
            ok = isinstance(value, str) and value.strip() != ""
            return [] if ok else [f"{where}: file widget {name!r} has no file name ({value!r})"]
        return [] if value in options else [f"{where}: {name}={value!r} not in {options}"]
    type_ok = {
        "INT": isinstance(value, int) and not isinstance(value, bool),
        "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
    }[kind]
    if not type_ok:
        return [f"{where}: {name}={value!r} is not a {kind}"]
    if kind in ("INT", "FLOAT"):
        lo, hi = opts.get("min", float("-inf")), opts.get("max", float("inf"))
        if not lo <= value <= hi:
            return [f"{where}: {name}={value!r} outside [{lo}, {hi}]"]
    return []


def check_widgets(node: dict, info: dict, file_inputs: set) -> list[str]:
    """Widget count (with the frontend's extra control/upload entries) and each value's validity.

    A stock node may have more trailing widgets than the file holds values for when each of
    them has a default (a newer ComfyUI added them); our nodes must match exactly."""
    where = f"node {node['id']} ({node['type']})"
    values = node.get("widgets_values")
    if values is None:
        values = []
    if not isinstance(values, list):
        return [f"{where}: widgets_values must be a list, got {type(values).__name__}"]
    widgets = widget_layout(node, info)
    expected = sum(widget_slots(n.rsplit(".", 1)[-1], s) for n, s, _ in widgets)
    unheld = [(n, s) for n, s, i in widgets if i >= len(values)]
    tolerated = (not node["type"].startswith(OUR_PREFIX) and unheld
                 and len(values) == widgets[len(widgets) - len(unheld)][2]
                 and all(_has_default(s) for _, s in unheld))
    if len(values) != expected and not tolerated:
        names = [n for n, _, _ in widgets]
        return [f"{where}: {len(values)} widgets_values, expected {expected} for widgets {names}"]
    problems = []
    for name, spec, i in widgets:
        if i >= len(values):
            continue
        problems += _check_value(where, name, spec, values[i], file_inputs)
        has_control = widget_slots(name, spec) > 1 and combo_options(spec) is None
        if has_control and values[i + 1] not in CONTROL_VALUES:
            problems.append(f"{where}: control value after {name!r} is {values[i + 1]!r}")
    return problems


def _types_match(a: str, b: str) -> bool:
    if "*" in (a, b):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def _spec_socket_type(spec: list) -> str:
    kind, _ = _spec_type_and_options(spec)
    return "COMBO" if combo_options(spec) is not None else str(kind)


def check_node_sockets(node: dict, info: dict) -> list[str]:
    """Serialized inputs/outputs agree with the schema; required sockets are connected."""
    where = f"node {node['id']} ({node['type']})"
    specs = {name: (spec, req) for name, spec, req in ordered_inputs(info)}
    problems = []
    connected = set()
    for entry in node.get("inputs") or []:
        name = entry.get("name")
        if name not in specs:
            problems.append(f"{where}: input {name!r} is not in the schema")
            continue
        spec, _ = specs[name]
        if is_widget(spec) and "widget" not in entry:
            problems.append(f"{where}: widget input {name!r} listed without 'widget'")
        if not _types_match(entry.get("type", ""), _spec_socket_type(spec)):
            problems.append(f"{where}: input {name!r} type {entry.get('type')!r} != schema")
        if entry.get("link") is not None:
            connected.add(name)
    for name, (spec, required) in specs.items():
        if required and not is_widget(spec) and name not in connected:
            problems.append(f"{where}: required input {name!r} is not connected")
    outputs = node.get("outputs") or []
    schema_out = info.get("output", [])
    # A newer ComfyUI may append outputs to a stock node (0.33's GetVideoComponents).
    added_ok = not node["type"].startswith(OUR_PREFIX) and len(outputs) < len(schema_out)
    if len(outputs) != len(schema_out) and not added_ok:
        problems.append(f"{where}: {len(outputs)} outputs, schema has {len(schema_out)}")
    for slot, (entry, kind) in enumerate(zip(outputs, schema_out)):
        kind = "COMBO" if isinstance(kind, list) else kind
        if not _types_match(entry.get("type", ""), kind):
            problems.append(f"{where}: output {slot} type {entry.get('type')!r} != {kind!r}")
    return problems


def check_links(workflow: dict) -> list[str]:
    """Every link joins an existing output slot to an existing input slot, both recording it."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    problems, seen = [], set()
    for link in workflow.get("links", []):
        if not (isinstance(link, list) and len(link) == 6):
            problems.append(f"link {link!r} is not [id, origin, slot, target, slot, type]")
            continue
        lid, src, sslot, dst, dslot, kind = link
        seen.add(lid)
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: node {src} or {dst} does not exist")
            continue
        outs = nodes[src].get("outputs") or []
        ins = nodes[dst].get("inputs") or []
        if sslot >= len(outs) or lid not in (outs[sslot].get("links") or []):
            problems.append(f"link {lid}: output {sslot} of node {src} does not list it")
        elif not _types_match(outs[sslot].get("type", ""), kind):
            problems.append(f"link {lid}: type {kind!r} != output type {outs[sslot].get('type')!r}")
        if dslot >= len(ins) or ins[dslot].get("link") != lid:
            problems.append(f"link {lid}: input {dslot} of node {dst} does not hold it")
        elif not _types_match(ins[dslot].get("type", ""), kind):
            problems.append(f"link {lid}: type {kind!r} != input type {ins[dslot].get('type')!r}")
    for node in nodes.values():
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None and entry["link"] not in seen:
                problems.append(f"node {node['id']}: input {entry.get('name')!r} has dangling link")
        for entry in node.get("outputs") or []:
            for lid in entry.get("links") or []:
                if lid not in seen:
                    problems.append(f"node {node['id']}: output lists dangling link {lid}")
    return problems


def check_models(node: dict, info: dict) -> list[str]:
    """Loader nodes: each file widget value has a ``properties.models`` entry the frontend uses.

    The frontend keeps only entries whose ``name`` equals a widget value, offers downloads only
    from huggingface.co for ``.safetensors`` names, and needs ``directory`` to be a model folder;
    the URL must download that very file (``resolve/main/.../<name>``).
    """
    where = f"node {node['id']} ({node['type']})"
    wanted = MODEL_FILE_INPUTS.get(node["type"], set())
    files = {k: v for k, v in widget_values_by_name(node, info).items()
             if k in wanted and (node["type"], k) not in NO_DOWNLOAD}
    if not files:
        return []
    models = (node.get("properties") or {}).get("models") or []
    names = {m.get("name") for m in models}
    problems = [f"{where}: file {v!r} ({k}) has no properties.models entry"
                for k, v in files.items() if v not in names]
    for m in models:
        if m.get("name") not in files.values():
            problems.append(f"{where}: properties.models entry {m.get('name')!r} matches no widget")
        url = HF_FILE_URL.fullmatch(str(m.get("url", "")))
        if url is None or url.group(1) != m.get("name"):
            problems.append(f"{where}: model url {m.get('url')!r} is not a {HF_PREFIX}<repo>/"
                            f"resolve/main/ link to {m.get('name')!r}")
        if not str(m.get("name", "")).endswith(".safetensors"):
            problems.append(f"{where}: model name {m.get('name')!r} is not .safetensors")
        if m.get("directory") not in MODEL_DIRECTORIES:
            problems.append(f"{where}: model directory {m.get('directory')!r} unknown")
    return problems


def check_top_level(workflow: dict) -> list[str]:
    """Ids unique and within last_node_id/last_link_id; the frontend's schema version."""
    problems = []
    for key in ("nodes", "links", "version", "last_node_id", "last_link_id"):
        if key not in workflow:
            problems.append(f"missing top-level key {key!r}")
    if problems:
        return problems
    node_ids = [n["id"] for n in workflow["nodes"]]
    link_ids = [link[0] for link in workflow["links"]]
    if len(set(node_ids)) != len(node_ids) or len(set(link_ids)) != len(link_ids):
        problems.append("node or link ids are not unique")
    if node_ids and max(node_ids) > workflow["last_node_id"]:
        problems.append("last_node_id is below the highest node id")
    if link_ids and max(link_ids) > workflow["last_link_id"]:
        problems.append("last_link_id is below the highest link id")
    if workflow.get("definitions", {}).get("subgraphs"):
        problems.append("subgraphs are not supported by this validator")
    return problems


def check_workflow(workflow: dict, object_info: dict) -> list[str]:
    """All structural problems of one UI-format workflow; an empty list means valid."""
    problems = check_top_level(workflow)
    if problems:
        return problems
    for node in workflow["nodes"]:
        kind = node.get("type")
        if kind in FRONTEND_ONLY:
            continue
        if kind not in object_info or kind == "_meta":
            problems.append(f"node {node['id']}: type {kind!r} not in object_info")
            continue
        info = object_info[kind]
        files = MODEL_FILE_INPUTS.get(kind, set()) | MEDIA_FILE_INPUTS.get(kind, set())
        problems += check_widgets(node, info, files)
        problems += check_node_sockets(node, info)
        problems += check_models(node, info)
    return problems + check_links(workflow)


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """API-format prompt (what the frontend's "Export (API)" posts) of a UI workflow without
    subgraphs, reroutes or muted nodes, such as the bundled ones: frontend-only nodes dropped,
    widget values by name (a dynamic combo's as ``parent.child``), links as
    ``[source id, output slot]``, and, as comfy-cli's converter does, the schema default of
    every input the file holds no value for (inputs a newer ComfyUI added).

    Raises ValueError for a node this conversion does not cover (bypassed/muted, unknown type).
    """
    sources = {link[0]: [str(link[1]), link[2]] for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0 or kind not in object_info:
            raise ValueError(f"node {node['id']} ({kind}): mode {node.get('mode', 0)} or unknown "
                             "type is not covered by this conversion")
        inputs = widget_values_by_name(node, object_info[kind])
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None:
                inputs[entry["name"]] = sources[entry["link"]]
        for name, spec, _ in ordered_inputs(object_info[kind]):
            if name not in inputs and _has_default(spec):
                inputs[name] = input_default(spec)
        title = node.get("title") or object_info[kind].get("display_name", kind)
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}
    return prompt
