"""Checks on a queued prompt that ComfyUI's own input validation cannot make.

A node whose verdict depends on the pipeline linked to it (Pipeline to ComfyUI, Encode Prompt with
Pipeline: is the Load node's model a family the bridge maps?) gets None for that input in its
VALIDATE_INPUTS, since linked values exist only once upstream nodes ran. So the verdict is taken
from the prompt itself, before ComfyUI validates it: `on_prompt` (ComfyUI calls it with the queued
JSON, `PromptServer.add_on_prompt_handler`) follows each such node's `pipeline` link, through Apply
LoRA, to the Load node and the model it names, reads the model's folder (model_index.json and
configs: no weights) and asks the node class's `check_model`. The messages are kept per prompt id
and node id (for the classes that say CHECKED_AT_QUEUE); the node's VALIDATE_INPUTS, which takes `pipeline` alone (one error, on that input),
looks its own up through ComfyUI's executing context (`verdict`). The runner asks each node's
`check_model` on the planned model itself (runner/execute.py).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from ..resolver.files import inspect_model, resolve_model
from ..resolver.problems import ValidationError
from .messages import validation_result

LOAD_NODE = "PipeQuantLoadPipeline"
MAX_PROMPTS = 64  # verdicts kept for prompts being validated; older ones are dropped
_VERDICTS: OrderedDict[str, dict[str, str]] = OrderedDict()


def _link(value) -> tuple[str, int] | None:
    ok = isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
    return (str(value[0]), value[1]) if ok else None


def load_node_of(prompt: dict, node_id: str) -> str | None:
    """The Load node a node's `pipeline` comes from, through nodes that pass a pipeline on (Apply
    LoRA: a `pipeline` input, and a pipeline out); None when it comes from elsewhere."""
    seen = set()
    current = prompt.get(node_id)
    while isinstance(current, dict):
        link = _link((current.get("inputs") or {}).get("pipeline"))
        if link is None or link[0] in seen:
            return None
        seen.add(link[0])
        source = prompt.get(link[0])
        if isinstance(source, dict) and source.get("class_type") == LOAD_NODE:
            return link[0]
        current = source
    return None


def refusals(prompt: dict, node_classes: dict, roots) -> dict[str, str]:
    """{node id: the message} for each node whose `check_model` refuses the model its Load node
    names. A model that does not resolve is left to the Load node's own check."""
    found: dict[str, str] = {}
    models: dict[str, object] = {}
    for node_id, node in prompt.items():
        cls = node_classes.get(node.get("class_type")) if isinstance(node, dict) else None
        check = getattr(cls, "check_model", None) if getattr(cls, "CHECKED_AT_QUEUE", False) else None
        load = load_node_of(prompt, str(node_id)) if check is not None else None
        name = (prompt[load].get("inputs") or {}).get("model") if load is not None else None
        if not isinstance(name, str):
            continue
        if name not in models:
            try:
                models[name] = inspect_model(resolve_model(name, roots))
            except (ValidationError, OSError, ValueError):
                models[name] = None
        if models[name] is None:
            continue
        result = validation_result(check(models[name]), cls.TITLE)
        if result is not True:
            found[str(node_id)] = result
    return found


def on_prompt(json_data, node_classes: dict, roots):
    """ComfyUI's on-prompt hook: keep the verdicts of this prompt for the nodes' VALIDATE_INPUTS.
    The prompt id is the one ComfyUI would give it (a new uuid4 when the client sent none)."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    found = refusals(prompt, node_classes, roots)
    if found:
        prompt_id = str(json_data.setdefault("prompt_id", str(uuid.uuid4())))
        _VERDICTS[prompt_id] = found
        while len(_VERDICTS) > MAX_PROMPTS:
            _VERDICTS.popitem(last=False)
    return json_data


def verdict():
    """VALIDATE_INPUTS' answer for the node ComfyUI is validating: True, or its refusal."""
    try:
        from comfy_execution.utils import get_executing_context  # ComfyUI >= 0.3.4x
    except ImportError:  # the headless runner checks the plan itself
        return True
    context = get_executing_context()
    if context is None:
        return True
    return _VERDICTS.get(str(context.prompt_id), {}).get(str(context.node_id), True)
