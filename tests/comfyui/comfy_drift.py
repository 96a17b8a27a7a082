"""What a newer ComfyUI may add without it counting as a change to our nodes (pure Python).

Used by the real-ComfyUI tests (``/object_info`` against ``tests/data/object_info.json``) and
the browser tests (widgets after the frontend loads a workflow), and tested on the CPU with
mutated copies of the snapshot (``test_comfy_drift.py``).

* ``/object_info``: ComfyUI adds fields to every node over time (0.8.0 added
  ``output_matchtypes: null`` to every V3 node). A field present on one side only is tolerated
  when its value is ComfyUI's default (None, False, or empty): absent and default mean the same.
  Any other difference, at any depth, is a change: a value, a tooltip, an input or output added
  or removed, the input order, or a new field with a real value.
* Widgets: a newer frontend may add frontend-only widgets to stock nodes (1.35.9 gives
  ``PreviewAny`` ``preview``, ``preview``, ``previewMode``, saved as ``[null, null, false]``),
  and a newer ComfyUI may add inputs to stock nodes (0.33's ``CreateVideo`` ``bit_depth``,
  loaded at its default 8; frontend 1.58.1 also draws 0.33's hidden SaveVideo ``codec``, at its
  first option). Both are tolerated after the file's values, on stock nodes: a widget that is
  not an input of the schema, or a schema input at the value the frontend gives a new widget. Every
  value in the file must come back unchanged, and our nodes must come back exactly as saved.
"""

OUR_PREFIX = "LongCat"


def is_comfy_default(value) -> bool:
    """None, False or an empty string/list/dict: what an unset optional field holds."""
    return value is None or value is False or (isinstance(value, (str, list, dict)) and not value)


def _unset(value) -> bool:
    """None or an empty string/list/dict (not False: a False default is a value)."""
    return value is None or (isinstance(value, (str, list, dict)) and not value)


def node_info_changes(recorded, live, where: str = "") -> list[str]:
    """Differences between a recorded and a live ``/object_info`` entry that are not fields a
    newer ComfyUI added (or dropped) at their default value; empty when they agree."""
    if isinstance(recorded, dict) and isinstance(live, dict):
        problems = []
        for key in sorted(recorded.keys() | live.keys()):
            here = f"{where}.{key}" if where else key
            if key not in live:
                if not is_comfy_default(recorded[key]):
                    problems.append(f"{here}: recorded {recorded[key]!r}, now missing")
            elif key not in recorded:
                if not is_comfy_default(live[key]):
                    problems.append(f"{here}: not recorded, now {live[key]!r}")
            else:
                problems += node_info_changes(recorded[key], live[key], here)
        return problems
    if isinstance(recorded, list) and isinstance(live, list) and len(recorded) == len(live):
        return [problem for i, (a, b) in enumerate(zip(recorded, live))
                for problem in node_info_changes(a, b, f"{where}[{i}]")]
    if recorded == live or (_unset(recorded) and _unset(live)):
        return []  # e.g. search_aliases recorded None, now [] (both mean unset)
    return [f"{where}: recorded {recorded!r}, now {live!r}"]


def widget_changes(node: dict, loaded_values: list, loaded_names: list, info: dict | None) -> str | None:
    """Why the widgets of one workflow node, as the frontend loaded them, differ from the file
    beyond frontend-only widgets a newer frontend adds to stock nodes; None when they agree.

    ``loaded_values`` is the node's serialised ``widgets_values`` after loading, ``loaded_names``
    the names of its widgets in the same order, ``info`` its ``/object_info`` entry (None for
    frontend-only node types such as notes).
    """
    saved = node.get("widgets_values") or []
    if loaded_values[:len(saved)] != saved:
        return f"values changed: file {saved!r}, loaded {loaded_values!r}"
    extra = loaded_values[len(saved):]
    if not extra:
        return None
    extra_names = loaded_names[len(saved):len(loaded_values)]
    inputs = {}
    for section in ("required", "optional"):
        inputs.update(((info or {}).get("input") or {}).get(section) or {})
    if node["type"].startswith(OUR_PREFIX):
        return f"our node gained widgets {extra_names!r} = {extra!r}"
    if len(extra_names) != len(extra):
        return f"widgets {extra_names!r} = {extra!r} added, names and values do not pair up"
    for name, value in zip(extra_names, extra):
        spec = inputs.get(name)
        if spec is not None and frontend_default(spec) != value:
            return f"widget {name!r} = {value!r} added that the schema knows as an input (not at its default)"
    return None


def frontend_default(spec: list):
    """The value the frontend gives a new widget: the spec's default, else a combo's first
    option (V1 list, ``COMBO``, or a dynamic combo's first key, as 1.58.1 shows 0.33's hidden
    SaveVideo ``codec``); ``...`` when there is none."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = kind if isinstance(kind, list) else opts.get("options") or []
    if options:
        return options[0]["key"] if isinstance(options[0], dict) else options[0]
    return ...
