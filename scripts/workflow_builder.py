"""Build UI-format (frontend) ComfyUI workflows from node schemas, for ``build_workflows.py``.

Widget order, socket lists and output slots come from an ``/object_info`` snapshot
(``tests/data/object_info.json``), so a generated file matches what the frontend saves for the
same graph: ``widgets_values`` in schema order with the frontend's extra entries
(``control_after_generate`` after seeds, the upload button's value after upload combos), socket
inputs in schema order, links as 6-tuples. Imports neither torch nor ComfyUI.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

FRONTEND_VERSION = "1.27.10"  # the frontend pinned by ComfyUI 0.3.64 (a125cd84)
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
SLOT_H, WIDGET_H, TEXT_H = 22, 26, 120  # LiteGraph slot/widget heights; multiline text box
# Room for what a newer ComfyUI draws in a node (LoadAudio: its player; the audio embeds node:
# sockets and widgets stack in 0.33's frontend); CreateVideo: 0.33 adds a bit_depth widget, and
# the frontend grows the node over the one below it without this headroom.
EXTRA_H = {"LoadImage": 260, "LoadVideo": 260, "LoadAudio": 160, "SaveVideo": 320, "PreviewAny": 160,
           "CreateVideo": 2 * WIDGET_H, "LongCatAvatarAudioEmbeds": 3 * SLOT_H}


def _combo(spec: list) -> list | None:
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return spec[1].get("options", [])
    return None


def _opts(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec: list) -> bool:
    return _combo(spec) is not None or (
        spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN") and not _opts(spec).get("forceInput"))


def _default(spec: list):
    opts, options = _opts(spec), _combo(spec)
    if "default" in opts:
        return opts["default"]
    if options is not None:
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec[0]]


@dataclass
class Node:
    """One node of the graph; ``out(name)`` gives an output handle for ``Workflow.link``."""

    id: int
    type: str
    data: dict = field(repr=False)

    def out(self, name_or_slot: str | int = 0) -> tuple[Node, int]:
        outputs = self.data["outputs"]
        if isinstance(name_or_slot, int):
            return self, name_or_slot
        for slot, entry in enumerate(outputs):
            if entry["name"] == name_or_slot:
                return self, slot
        raise ValueError(f"{self.type} has no output {name_or_slot!r}: {[o['name'] for o in outputs]}")

    @property
    def height(self) -> float:
        return self.data["size"][1] + 40  # title bar and a gap


class Workflow:
    """A UI-format workflow under construction."""

    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, node_type: str, pos, widgets: dict | None = None, *, title: str | None = None,
            width: int = 320, models: list[dict] | None = None, color: str | None = None) -> Node:
        """Add a node; widgets not given take the schema default (seeds are kept 'fixed')."""
        if node_type not in self.info:
            raise ValueError(f"node type {node_type!r} is not in object_info")
        info = self.info[node_type]
        widgets = dict(widgets or {})
        values, sockets, n_text = [], [], 0
        for section in ("required", "optional"):
            specs = info["input"].get(section, {})
            for name in info["input_order"].get(section, []):
                spec = specs[name]
                if not _is_widget(spec):
                    sockets.append({"name": name, "type": spec[0], "link": None,
                                    **({"shape": 7} if section == "optional" else {})})
                    continue
                values.append(widgets.pop(name) if name in widgets else _default(spec))
                n_text += bool(spec[0] == "STRING" and _opts(spec).get("multiline"))
                if _opts(spec).get("control_after_generate") or name in ("seed", "noise_seed"):
                    values.append("fixed")
                if _combo(spec) is not None and any(_opts(spec).get(f) for f in UPLOAD_FLAGS):
                    values.append("image")
        if widgets:
            raise ValueError(f"{node_type}: unknown widgets {sorted(widgets)}")
        outputs = [{"name": name, "type": kind if isinstance(kind, str) else "COMBO",
                    "links": [], "slot_index": slot}
                   for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"]))]
        height = (max(len(sockets), len(outputs)) * SLOT_H + len(values) * WIDGET_H
                  + n_text * TEXT_H + EXTRA_H.get(node_type, 0) + 10)
        data = {"id": len(self.nodes) + 1, "type": node_type, "pos": [float(pos[0]), float(pos[1])],
                "size": [float(width), float(height)], "flags": {}, "order": len(self.nodes),
                "mode": 0, "inputs": sockets, "outputs": outputs,
                "properties": {"Node name for S&R": node_type}, "widgets_values": values}
        if models:
            data["properties"]["models"] = models
        if title:
            data["title"] = title
        if color:
            data["color"], data["bgcolor"] = color
        node = Node(data["id"], node_type, data)
        self.nodes.append(node)
        return node

    def note(self, pos, text: str, *, title: str = "Note", width: int = 400,
             height: int = 300) -> Node:
        """A MarkdownNote (frontend-only node, not executed)."""
        data = {"id": len(self.nodes) + 1, "type": "MarkdownNote",
                "pos": [float(pos[0]), float(pos[1])], "size": [float(width), float(height)],
                "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                "title": title, "properties": {}, "widgets_values": [text],
                "color": "#432", "bgcolor": "#653"}
        node = Node(data["id"], "MarkdownNote", data)
        self.nodes.append(node)
        return node

    def link(self, source: tuple[Node, int] | Node, target: Node, input_name: str) -> None:
        """Connect an output (``node.out(...)`` or a node's first output) to a socket input."""
        src, slot = source if isinstance(source, tuple) else source.out(0)
        inputs = target.data["inputs"]
        dslot = next((i for i, e in enumerate(inputs) if e["name"] == input_name), None)
        if dslot is None:
            raise ValueError(f"{target.type} has no socket input {input_name!r}")
        if inputs[dslot]["link"] is not None:
            raise ValueError(f"{target.type}.{input_name} is already connected")
        kind = src.data["outputs"][slot]["type"]
        link_id = len(self.links) + 1
        self.links.append([link_id, src.id, slot, target.id, dslot, kind])
        src.data["outputs"][slot]["links"].append(link_id)
        inputs[dslot]["link"] = link_id

    def group(self, title: str, nodes: list[Node], color: str = "#3f789e", pad: int = 20) -> None:
        """A frame around ``nodes`` (their bounding box plus a title bar)."""
        x0 = min(n.data["pos"][0] for n in nodes) - pad
        y0 = min(n.data["pos"][1] for n in nodes) - pad - 70
        x1 = max(n.data["pos"][0] + n.data["size"][0] for n in nodes) + pad
        y1 = max(n.data["pos"][1] + n.data["size"][1] for n in nodes) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title,
                            "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                            "font_size": 24, "flags": {}})

    def to_json(self, name: str) -> dict:
        """The workflow dict (schema version 0.4, as the bundled templates); ``name`` seeds its id."""
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "longcat-workflow/" + name)), "revision": 0, "last_node_id": len(self.nodes),
                "last_link_id": len(self.links), "nodes": [n.data for n in self.nodes],
                "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.6, "offset": [0, 0]},
                          "frontendVersion": FRONTEND_VERSION},
                "version": 0.4}


class Column:
    """Stacks nodes top to bottom at one x position."""

    def __init__(self, x: float, y: float = 0.0):
        self.x, self.y = x, y

    def next(self) -> tuple[float, float]:
        return self.x, self.y

    def push(self, node: Node) -> Node:
        self.y = node.data["pos"][1] + node.height
        return node
