"""Read an exported workflow (API or UI format) into the API form: {id: {class_type, inputs}}.

UI format (what ComfyUI's Export writes) keeps widget values as a list in each node's
`widgets_values`, in the order of the node's INPUT_TYPES; an INT with `control_after_generate`
(the seed) is followed by one extra value ("fixed", "randomize", …) that is not an input.
As ComfyUI's editor does when it queues a prompt, muted nodes (mode 2) are left out and an input
linked to one stays unconnected; a bypassed node (mode 4) is left out and its outputs pass
through its input of the same type.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..resolver.problems import Problem, ValidationError
from ..resolver.safe_files import FileProblem, read_bytes
from ..resolver.suggest import did_you_mean

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
UI_ONLY_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
MUTED, BYPASSED = 2, 4
MAX_WORKFLOW_BYTES = 64 * 1024 * 1024


def _fail(code: str, field: str, message: str, suggestion: str = "") -> ValidationError:
    return ValidationError([Problem(code, field, message, suggestion)])


def _no_duplicate_keys(pairs):
    """json.loads keeps the last of two equal keys; two nodes with one id would silently become one.
    One pass with a set: an object with 100 000 keys is checked in milliseconds."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _fail(
                "workflow_duplicate_id",
                f"node {key:.40}",
                f'the workflow holds key "{key:.40}" twice',
                "give each node its own id (export the workflow again from ComfyUI)",
            )
        out[key] = value
    return out


def read_workflow(path: Path) -> dict:
    try:
        raw = read_bytes(path, MAX_WORKFLOW_BYTES)
    except FileProblem as exc:
        raise _fail("workflow_unreadable", "workflow", f"cannot read {path}: {exc}", "check the path") from None
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except ValidationError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _fail(
            "workflow_not_json",
            "workflow",
            f"{Path(path).name} is not JSON ({str(exc)[:200]})",
            "export the workflow again from ComfyUI (Workflow › Export, or Export (API))",
        ) from None
    if not isinstance(data, dict):
        raise _fail(
            "workflow_not_object",
            "workflow",
            f"{Path(path).name} holds a {type(data).__name__}, not a workflow",
            "export the workflow again from ComfyUI",
        )
    return data


def is_ui_format(data: dict) -> bool:
    return isinstance(data.get("nodes"), list)


def widget_inputs(node_class) -> list[tuple[str, bool]]:
    """(input name, has a control_after_generate value) for each widget, in widgets_values order."""
    spec = node_class.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            options = entry[1] if len(entry) > 1 else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                # The editor adds a control widget ("fixed", "randomize", …) after seeds.
                control = options.get("control_after_generate", name in ("seed", "noise_seed") and kind == "INT")
                out.append((name, bool(control)))
    return out


def node_label(node_id, kind) -> str:
    """How messages name a node: "node 3 (Load Quantized Pipeline)"."""
    from ..nodes import NODE_DISPLAY_NAME_MAPPINGS

    name = NODE_DISPLAY_NAME_MAPPINGS.get(kind, kind) if isinstance(kind, str) else kind
    return f"node {node_id} ({name})"


def _key(value) -> bool:
    """Whether `value` can be a node or link id (JSON numbers and strings; not lists or objects)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def to_api(data: dict, node_classes: dict) -> dict:
    """API-format prompt from either format; raises ValidationError naming the bad node."""
    if not is_ui_format(data):
        prompt = data.get("prompt", data)
        if not isinstance(prompt, dict):
            raise _fail(
                "workflow_not_object",
                "workflow",
                f'"prompt" holds a {type(prompt).__name__}, not nodes',
                "export the workflow again from ComfyUI",
            )
        out = {}
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
                raise _fail(
                    "workflow_node_malformed",
                    f"node {node_id}",
                    "not an API-format node",
                    'each node needs "class_type" and "inputs"',
                )
            _check_known(node_id, node["class_type"], node_classes)
            out[str(node_id)] = {"class_type": node["class_type"], "inputs": dict(node.get("inputs", {}))}
        return out
    nodes = {}
    for n in data["nodes"]:
        if not isinstance(n, dict):
            continue
        node_id = str(n.get("id"))
        if node_id in nodes:
            raise _fail(
                "workflow_duplicate_id",
                f"node {node_id:.40}",
                f"two nodes have the id {node_id:.40}: one would silently replace the other",
                "give each node its own id (export the workflow again)",
            )
        nodes[node_id] = n
    links = {}
    raw_links = data.get("links")
    for link in raw_links if isinstance(raw_links, list) else []:
        if isinstance(link, list) and len(link) >= 5 and _key(link[0]):
            links[link[0]] = (str(link[1]), link[2])
        elif isinstance(link, dict) and _key(link.get("id")):
            links[link.get("id")] = (str(link.get("origin_id")), link.get("origin_slot"))
    prompt, followed = {}, {}
    for node_id, node in nodes.items():
        kind = node.get("type")
        if kind in UI_ONLY_NODES or node.get("mode") in (MUTED, BYPASSED):
            continue
        node_class = _check_known(node_id, kind, node_classes)
        inputs = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            inputs.update(values)
        elif isinstance(values, list):
            position = 0
            for name, has_control in widget_inputs(node_class):
                if position < len(values):
                    inputs[name] = values[position]
                position += 2 if has_control else 1
        slots = node.get("inputs") or []
        for slot in slots if isinstance(slots, list) else []:
            if not isinstance(slot, dict) or slot.get("link") is None:
                continue
            link_id, name = slot.get("link"), slot.get("name")
            if not isinstance(name, str):
                raise _fail(
                    "workflow_node_malformed",
                    node_label(node_id, kind),
                    f"an input has no name ({slot!r:.80})",
                    "export the workflow again from ComfyUI",
                )
            if not _key(link_id) or link_id not in links:
                raise _fail(
                    "workflow_dangling_link",
                    f"{node_label(node_id, kind)}.{name}",
                    f"input is connected to link {link_id!r:.40}, which the workflow does not have",
                    "reconnect the input in the editor and export again",
                )
            start = links[link_id]
            key = start if _key(start[1]) else None
            if key is None or key not in followed:  # many inputs fed by one Reroute chain: walked once
                origin = _follow(start, nodes, links)
                if key is not None:
                    followed[key] = origin
            origin = followed.get(key, origin) if key is not None else origin
            if origin is None:  # from a muted node, or a bypassed one with nothing to pass through
                continue
            source, out_slot = origin
            if source not in nodes:
                raise _fail(
                    "workflow_dangling_link",
                    f"{node_label(node_id, kind)}.{name}",
                    f"input is connected to node {source}, which the workflow does not have",
                    "reconnect the input in the editor and export again",
                )
            inputs[name] = [source, out_slot]
        prompt[node_id] = {"class_type": kind, "inputs": inputs}
    return prompt


def _follow(origin, nodes, links):
    """The (node, output) a link really comes from, through Reroutes and bypassed nodes; None when
    it comes from a muted node or a bypassed one with no connected input of the output's type."""
    source, slot = origin
    seen = set()
    while source in nodes and source not in seen:
        node = nodes[source]
        if node.get("mode") == MUTED:
            return None
        if node.get("type") == "Reroute":
            slots = node.get("inputs")
            passed = slots[0] if isinstance(slots, list) and slots and isinstance(slots[0], dict) else None
        elif node.get("mode") == BYPASSED:
            passed = _pass_through(node, slot)
            if passed is None:
                return None
        else:
            break
        seen.add(source)
        link_id = passed.get("link") if passed is not None else None
        if not _key(link_id) or link_id not in links:
            break
        source, slot = links[link_id]
    return source, slot


def _pass_through(node: dict, slot) -> dict | None:
    """The input a bypassed node passes output `slot` through: the input at the same index if it
    has the output's type, else the first connected input that has it (as ComfyUI's editor)."""
    outputs, inputs = node.get("outputs"), node.get("inputs")
    if (
        not isinstance(outputs, list)
        or not isinstance(inputs, list)
        or not isinstance(slot, int)
        or not 0 <= slot < len(outputs)
        or not isinstance(outputs[slot], dict)
    ):
        return None
    kind = outputs[slot].get("type")
    typed = [i for i in inputs if isinstance(i, dict) and i.get("type") == kind and i.get("link") is not None]
    if slot < len(inputs) and inputs[slot] in typed:
        return inputs[slot]
    return typed[0] if typed else None


def _check_known(node_id, kind, node_classes):
    if not isinstance(kind, str) or kind not in node_classes:
        raise _fail(
            "workflow_unknown_node",
            f"node {node_id}",
            f'unknown node type "{kind}"',
            did_you_mean(str(kind), list(node_classes)),
        )
    return node_classes[kind]
