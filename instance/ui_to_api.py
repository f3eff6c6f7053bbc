"""UI-format workflow (what ComfyUI's "Save" / example_workflows/*.json hold) -> API-format prompt (what POST /prompt
takes), with the node definitions of the ComfyUI that will run it (its /object_info, or INPUT_TYPES in-process).

It does what the frontend's graphToPrompt does for the graphs we ship:
- widgets_values map onto the node's widget inputs in INPUT_TYPES order (required, then optional); an INT input
  named seed / noise_seed, or with control_after_generate, is followed by the frontend's extra "control after
  generate" widget, and an input with image_upload (Load Image) by its "upload" button widget, both UI-only; missing trailing optional widgets (an input a newer ComfyUI added) take their
  default, as the frontend gives them;
- links become [origin id, origin slot] inputs (a link into a widget input overrides its value);
- a bypassed node (mode 4) is left out and each link from it is routed to its input of the same type (the input at
  the same index first, then the first of that type); a muted node (mode 2) is left out with every input linked to
  it; frontend-only nodes (Note, MarkdownNote) are dropped and Reroutes are followed.
"""
import copy
import json

MUTED, BYPASSED = 2, 4
NOTES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_NAMES = ("seed", "noise_seed")   # the frontend adds "control after generate" to these by name


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def object_info_inprocess(node_classes, types):
    """The part of /object_info the conversion needs, from the classes of a ComfyUI booted in this process."""
    out = {}
    for t in types:
        cls = node_classes[t]
        inputs = cls.INPUT_TYPES()
        out[t] = {"input": {sec: inputs.get(sec, {}) for sec in ("required", "optional")},
                  "input_order": {sec: list(inputs.get(sec, {})) for sec in ("required", "optional")}}
    return out


def node_types(ui):
    """The node types a workflow uses that must exist on the server (frontend-only nodes excluded)."""
    return sorted({n["type"] for n in ui["nodes"] if n["type"] not in NOTES and n["type"] != REROUTE})


def widget_inputs(info):
    """[(name, spec options, required, followed by a UI-only widget)] of a node's widget inputs, in widget order."""
    order = info.get("input_order") or {sec: list(info["input"].get(sec) or {}) for sec in ("required", "optional")}
    out = []
    for sec in ("required", "optional"):
        specs = info["input"].get(sec) or {}
        for name in order.get(sec) or []:
            spec = specs[name]
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if opts.get("forceInput") or not (isinstance(kind, list) or kind in WIDGET_TYPES):
                continue
            control = (bool(opts.get("control_after_generate")) or (kind == "INT" and name in CONTROL_NAMES)
                       or bool(opts.get("image_upload")))
            out.append((name, kind, opts, sec == "required", control))
    return out


def _default(kind, opts):
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        return (opts.get("options") or [None])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


def widget_values(node, info):
    values = node.get("widgets_values") or []
    if isinstance(values, dict):          # some frontends store {name: value}
        return dict(values)
    out, i = {}, 0
    for name, kind, opts, required, control in widget_inputs(info):
        if i >= len(values):
            if required:
                raise ValueError(f"node {node['id']} ({node['type']}): no widget value for required input '{name}' "
                                 f"(widgets_values {values})")
            out[name] = _default(kind, opts)
            continue
        out[name] = values[i]
        i += 2 if control else 1
    if i != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, this ComfyUI's "
                         f"definition takes {i} ({[w[0] for w in widget_inputs(info)]})")
    return out


def convert(ui, object_info):
    """The API prompt {node id: {"class_type", "inputs", "_meta"}} for a UI workflow."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui.get("links") or []}   # [id, origin, origin slot, target, slot, type]

    def source(link_id, want_type):
        """(origin id, slot) that feeds a link, through bypassed nodes and reroutes; None if nothing does."""
        link = links.get(link_id)
        while link is not None:
            origin = nodes[link[1]]
            if origin["type"] == REROUTE:
                link = links.get((origin.get("inputs") or [{}])[0].get("link"))
                continue
            if origin.get("mode") != BYPASSED:
                return link[1], link[2]
            inputs = origin.get("inputs") or []
            order = ([link[2]] if link[2] < len(inputs) else []) + list(range(len(inputs)))
            match = next((j for j in order if inputs[j].get("type") == want_type), None)
            if match is None:
                return None
            link = links.get(inputs[match].get("link"))
        return None

    out = {}
    for node in sorted(ui["nodes"], key=lambda n: n.get("order", 0)):
        kind = node["type"]
        if kind in NOTES or kind == REROUTE or node.get("mode") in (MUTED, BYPASSED):
            continue
        if kind not in object_info:
            raise KeyError(f"node {node['id']}: type '{kind}' is not in this ComfyUI's /object_info")
        inputs = widget_values(node, object_info[kind])
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            src = source(slot["link"], slot.get("type"))
            if src is not None:
                inputs[slot.get("widget", {}).get("name", slot["name"])] = [str(src[0]), src[1]]
        out[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                "_meta": {"title": node.get("title") or kind}}
    # inputs linked to a node that is not in the prompt (muted) are dropped, as the frontend does
    for node in out.values():
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in out:
                del node["inputs"][name]
    return out


def with_modes(ui, mode, types):
    """A copy of a UI workflow with every node of one of `types` set to `mode` (BYPASSED, MUTED)."""
    ui = copy.deepcopy(ui)
    for n in ui["nodes"]:
        if n["type"] in types:
            n["mode"] = mode
    return ui


def override(prompt, **values):
    """Set inputs by name on every node that has them (e.g. width=64, height=64, steps=2); returns how many were
    set. Only widget (non-link) inputs are touched."""
    count = 0
    for node in prompt.values():
        for name, value in values.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
                count += 1
    return count
