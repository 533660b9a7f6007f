"""Run an API-format prompt the way ComfyUI does: validate every node first, then execute the
nodes the outputs need, in dependency order, under torch.inference_mode()."""
from __future__ import annotations

import inspect

from ..nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from ..nodes.load import PipeQuantLoadPipeline, plan_pipeline
from ..resolver.problems import Problem, ValidationError
from .builtin import BUILTIN_NODES

ALL_NODES = {**NODE_CLASS_MAPPINGS, **BUILTIN_NODES}
CONFIG_NODES = ("PipeQuantBackend", "PipeQuantComponentMap")  # cheap: they read no weights


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _label(node_id: str, prompt: dict) -> str:
    kind = prompt[node_id]["class_type"]
    return f"node {node_id} ({NODE_DISPLAY_NAME_MAPPINGS.get(kind, kind)})"


def _check_value(entry, value) -> str | None:
    """What is wrong with a widget's constant value, as ComfyUI checks it (None: nothing)."""
    kind = entry[0]
    options = entry[1] if len(entry) > 1 else {}
    if isinstance(kind, list):
        return None if value in kind else f"one of: {', '.join(map(str, kind))}"
    if kind in ("INT", "FLOAT"):
        lo, hi = options.get("min"), options.get("max")
        what = "an integer" if kind == "INT" else "a number"
        span = f"{what} from {lo} to {hi}" if lo is not None and hi is not None else what
        ok_type = isinstance(value, int) if kind == "INT" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            return span
        if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
            return span
        return None
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else "true or false"
    if kind == "STRING":
        return None if isinstance(value, str) else "text"
    return None


def check_prompt(prompt: dict) -> list[Problem]:
    """ComfyUI's checks before a run: links point at nodes' outputs, required inputs are there,
    widget values have their type and range, and every node's VALIDATE_INPUTS passes on its
    constant inputs (inputs VALIDATE_INPUTS takes are left to it, as ComfyUI does)."""
    problems = []
    for node_id, node in prompt.items():
        node_class = ALL_NODES[node["class_type"]]
        spec = node_class.INPUT_TYPES()
        validate = getattr(node_class, "VALIDATE_INPUTS", None)
        wanted = inspect.signature(validate).parameters if validate is not None else {}
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, value in node["inputs"].items():
            if _is_link(value):
                if value[0] not in prompt:
                    problems.append(Problem("workflow_dangling_link", f"{_label(node_id, prompt)}.{name}",
                                            f"linked to node {value[0]}, which is not in the workflow",
                                            "reconnect the input and export again"))
                    continue
                outputs = len(ALL_NODES[prompt[value[0]]["class_type"]].RETURN_TYPES)
                if not 0 <= value[1] < outputs:
                    problems.append(Problem("workflow_dangling_link", f"{_label(node_id, prompt)}.{name}",
                                            f"linked to output {value[1]} of node {value[0]}, which has {outputs}",
                                            "reconnect the input and export again"))
            elif name in declared and name not in wanted:
                valid = _check_value(declared[name], value)
                if valid is not None:
                    problems.append(Problem("workflow_bad_value", f"{_label(node_id, prompt)}.{name}",
                                            f"{value!r:.80} is not valid here", f"use {valid}"))
        for name in spec.get("required", {}):
            if name not in node["inputs"]:
                problems.append(Problem("workflow_missing_input", f"{_label(node_id, prompt)}.{name}",
                                        "required input is missing", "connect it or set its value"))
        if validate is None:
            continue
        constants = {k: v for k, v in node["inputs"].items() if k in wanted and not _is_link(v)}
        if any(p.default is inspect.Parameter.empty and n not in constants for n, p in wanted.items()):
            continue  # a required widget is linked or missing: reported above / checked at run time
        result = validate(**constants)
        if result is not True:
            found = getattr(result, "problems", ())  # our nodes' NodeMessage keeps the codes
            problems += [Problem(p.code, f"{_label(node_id, prompt)}.{p.field}", p.message, p.suggestion, p.component)
                         for p in found] or [Problem("node_invalid", _label(node_id, prompt), str(result), "")]
    return problems


def output_nodes(prompt: dict) -> list[str]:
    return [i for i, n in prompt.items() if getattr(ALL_NODES[n["class_type"]], "OUTPUT_NODE", False)]


def execute(prompt: dict, *, validate_only: bool = False) -> dict:
    """Run the prompt; returns {node id: ui dict} of the output nodes. With `validate_only`, config
    nodes run (they read no weights) and loaders only validate their whole plan."""
    import torch

    problems = check_prompt(prompt)
    if problems:
        raise ValidationError(problems)
    results: dict[str, tuple] = {}
    ui: dict[str, dict] = {}
    visiting: set[str] = set()

    def run(node_id: str):
        if node_id in results:
            return results[node_id]
        if node_id in visiting:
            raise ValidationError([Problem("workflow_cycle", _label(node_id, prompt), "the workflow has a cycle",
                                           "remove the loop")])
        visiting.add(node_id)
        node = prompt[node_id]
        node_class = ALL_NODES[node["class_type"]]
        spec = node_class.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        kwargs = {name: (run(value[0])[value[1]] if _is_link(value) else value)
                  for name, value in node["inputs"].items() if name in declared}  # ComfyUI ignores the others
        if validate_only and node_class is PipeQuantLoadPipeline:
            plan_pipeline(kwargs["model"], kwargs["dtype"], kwargs["device"], kwargs["offload"],
                          kwargs.get("quantization"), allow_pickle=kwargs.get("allow_pickle", False) is True)
            out = (None, None)
        elif validate_only and node["class_type"] not in CONFIG_NODES:
            out = (None,) * max(1, len(node_class.RETURN_TYPES))
        else:
            value = getattr(node_class(), node_class.FUNCTION)(**kwargs)
            if isinstance(value, dict):
                ui[node_id] = value.get("ui", {})
                value = value.get("result", ())
            out = tuple(value)
        visiting.discard(node_id)
        results[node_id] = out
        return out

    with torch.inference_mode():  # as ComfyUI's executor does
        for node_id in output_nodes(prompt):
            run(node_id)
    return ui
