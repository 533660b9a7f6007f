"""Run an API-format prompt the way ComfyUI does: validate the nodes the outputs need first (as
ComfyUI does, a node that feeds no output is neither checked nor run), then execute them in
dependency order, under torch.inference_mode()."""

from __future__ import annotations

import inspect

from ..nodes import NODE_CLASS_MAPPINGS
from ..resolver.decide import Plan
from ..resolver.keep import LoadError, SaveError
from ..resolver.problems import Problem, ValidationError
from .builtin import BUILTIN_NODES
from .workflow import node_label

ALL_NODES = {**NODE_CLASS_MAPPINGS, **BUILTIN_NODES}
CONFIG_NODES = ("PipeQuantBackend", "PipeQuantComponentMap")  # cheap: they read no weights


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


class RunError(RuntimeError):
    """A node failed while running (not bad input, not a failed load): names the node."""

    def __init__(self, label: str, cause: BaseException):
        self.label = label
        message = str(cause).strip().splitlines()[0][:400] if str(cause).strip() else ""
        super().__init__(f"{label} failed: {type(cause).__name__}: {message}")


def _is_link(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _label(node_id: str, prompt: dict) -> str:
    return node_label(node_id, prompt[node_id]["class_type"])


def _type_name(kind) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


def types_match(received, wanted) -> bool:
    """ComfyUI's rule (comfy_execution/validation.py): equal, "*", or overlapping "A,B" unions."""
    received, wanted = _type_name(received), _type_name(wanted)
    if received == wanted or "*" in (received, wanted):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in wanted.split(",")})


def _check_link(node_id: str, name: str, value, entry, prompt: dict) -> list[Problem]:
    where = f"{_label(node_id, prompt)}.{name}"
    if not _is_link(value):
        return [
            Problem(
                "workflow_bad_link",
                where,
                f"{value!r:.80} is not a link [node id, output index]",
                "reconnect the input and export again",
            )
        ]
    if value[0] not in prompt:
        return [
            Problem(
                "workflow_dangling_link",
                where,
                f"linked to node {value[0]}, which is not in the workflow",
                "reconnect the input and export again",
            )
        ]
    source = ALL_NODES[prompt[value[0]]["class_type"]]
    outputs = source.RETURN_TYPES
    if not 0 <= value[1] < len(outputs):
        return [
            Problem(
                "workflow_dangling_link",
                where,
                f"linked to output {value[1]} of node {value[0]}, which has {len(outputs)}",
                "reconnect the input and export again",
            )
        ]
    received, wanted = outputs[value[1]], entry[0]
    if not types_match(received, wanted):
        return [
            Problem(
                "workflow_type_mismatch",
                where,
                f"is linked to output {value[1]} of {_label(value[0], prompt)}, a {received}; "
                f"this input takes {_type_name(wanted)}",
                f"connect a node that outputs {_type_name(wanted)}",
            )
        ]
    return []


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


def check_prompt(prompt: dict, nodes=None) -> list[Problem]:
    """ComfyUI's checks before a run: links point at nodes' outputs, required inputs are there,
    widget values have their type and range, and every node's VALIDATE_INPUTS passes on its
    constant inputs (inputs VALIDATE_INPUTS takes are left to it, as ComfyUI does). `nodes`: the
    ids to check (default: all), e.g. `needed_nodes(prompt, outputs)`."""
    problems = []
    specs: dict = {}  # INPUT_TYPES once per class: a Load node's lists the model folders
    for node_id in prompt if nodes is None else nodes:
        node = prompt[node_id]
        node_class = ALL_NODES[node["class_type"]]
        if node_class not in specs:
            specs[node_class] = node_class.INPUT_TYPES()
        spec = specs[node_class]
        # A node's `check` takes every input together (its VALIDATE_INPUTS takes one, for ComfyUI).
        validate = getattr(node_class, "check", None) or getattr(node_class, "VALIDATE_INPUTS", None)
        wanted = inspect.signature(validate).parameters if validate is not None else {}
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, value in node["inputs"].items():
            if name not in declared:
                continue  # ComfyUI ignores inputs a node does not declare
            kind = declared[name][0]
            socket = not isinstance(kind, list) and kind not in WIDGET_TYPES  # a link must feed it
            if isinstance(value, list):  # ComfyUI reads any list as a link
                problems += _check_link(node_id, name, value, declared[name], prompt)
            elif socket and not (value is None and name not in spec.get("required", {})):
                problems.append(
                    Problem(
                        "workflow_needs_link",
                        f"{_label(node_id, prompt)}.{name}",
                        f"is the constant {value!r:.60}, but this input takes a link from a node that outputs {kind}",
                        f"connect a node that outputs {kind}",
                    )
                )
            elif name not in wanted:
                valid = _check_value(declared[name], value)
                if valid is not None:
                    problems.append(
                        Problem(
                            "workflow_bad_value",
                            f"{_label(node_id, prompt)}.{name}",
                            f"{value!r:.80} is not valid here",
                            f"use {valid}",
                        )
                    )
        for name in spec.get("required", {}):
            if name not in node["inputs"]:
                problems.append(
                    Problem(
                        "workflow_missing_input",
                        f"{_label(node_id, prompt)}.{name}",
                        "required input is missing",
                        "connect it or set its value",
                    )
                )
        if validate is None:
            continue
        constants = {k: v for k, v in node["inputs"].items() if k in wanted and not isinstance(v, list)}
        if any(p.default is inspect.Parameter.empty and n not in constants for n, p in wanted.items()):
            continue  # a required widget is linked or missing: reported above / checked at run time
        result = validate(**constants)
        if result is not True:
            found = getattr(result, "problems", ())  # our nodes' NodeMessage keeps the codes
            problems += [
                Problem(p.code, f"{_label(node_id, prompt)}.{p.field}", p.message, p.suggestion, p.component)
                for p in found
            ] or [Problem("node_invalid", _label(node_id, prompt), str(result), "")]
    return problems


def output_nodes(prompt: dict) -> list[str]:
    return [i for i, n in prompt.items() if getattr(ALL_NODES[n["class_type"]], "OUTPUT_NODE", False)]


def _declared(node_class, specs: dict | None = None) -> dict:
    """The inputs a node class declares; `specs` memoizes them per class for one pass over a prompt."""
    if specs is not None and node_class in specs:
        return specs[node_class]
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    if specs is not None:
        specs[node_class] = declared
    return declared


def _dependencies(prompt: dict, node_id: str, specs: dict | None = None) -> list[str]:
    declared = _declared(ALL_NODES[prompt[node_id]["class_type"]], specs)
    return [v[0] for k, v in prompt[node_id]["inputs"].items() if k in declared and _is_link(v)]


def needed_nodes(prompt: dict, outputs: list[str]) -> list[str]:
    """The outputs and every node they link to, directly or not (links to missing nodes are left to
    check_prompt): what ComfyUI validates and runs. Linear in the size of the prompt."""
    specs: dict = {}
    seen, stack = set(outputs), list(outputs)
    while stack:
        for source in _dependencies(prompt, stack.pop(), specs):
            if source in prompt and source not in seen:
                seen.add(source)
                stack.append(source)
    return [n for n in prompt if n in seen]


def execution_order(prompt: dict, outputs: list[str]) -> list[str]:
    """The nodes the outputs need, each after what it links to. Iterative: a chain of thousands of
    Per-Component Maps is as fine as a short one."""
    order, state, specs = [], {}, {}  # state: 1 = on the current path, 2 = done
    for start in outputs:
        if state.get(start) == 2:
            continue
        state[start] = 1
        stack = [(start, iter(_dependencies(prompt, start, specs)))]
        while stack:
            node_id, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                stack.pop()
                state[node_id] = 2
                order.append(node_id)
            elif state.get(nxt) == 1:
                raise ValidationError(
                    [Problem("workflow_cycle", _label(nxt, prompt), "the workflow has a cycle", "remove the loop")]
                )
            elif state.get(nxt) is None:
                state[nxt] = 1
                stack.append((nxt, iter(_dependencies(prompt, nxt, specs))))
    return order


def execute(prompt: dict, *, validate_only: bool = False) -> dict:
    """Run the prompt; returns {node id: ui dict} of the output nodes. Everything is validated
    first, reading no weights (config nodes run, loaders validate their whole plan, samplers check
    the image size against the model), so a run fails before loading when it can."""
    outputs = output_nodes(prompt)
    problems = check_prompt(prompt, needed_nodes(prompt, outputs))
    if not outputs:
        problems.append(
            Problem(
                "workflow_no_output",
                "workflow",
                "the workflow has no output node: nothing would run",
                "add Save Image, Preview Image, Pipeline Memory Report or Save Quantized Pipeline",
            )
        )
    if problems:
        raise ValidationError(problems)
    order = execution_order(prompt, outputs)
    checked = _run(prompt, order, validate_only=True)  # reads configs and headers: no torch needed
    if validate_only:
        return checked
    import torch

    with torch.inference_mode():  # as ComfyUI's executor does
        return _run(prompt, order, validate_only=False)


def _run(prompt: dict, order: list[str], *, validate_only: bool) -> dict:
    results: dict[str, tuple] = {}
    ui: dict[str, dict] = {}
    specs: dict = {}
    for node_id in order:
        node = prompt[node_id]
        node_class = ALL_NODES[node["class_type"]]
        declared = _declared(node_class, specs)
        kwargs = {
            name: (results[value[0]][value[1]] if _is_link(value) else value)
            for name, value in node["inputs"].items()
            if name in declared
        }  # ComfyUI ignores the others
        if validate_only:
            results[node_id] = _validate_node(node_id, node, node_class, kwargs, prompt)
            warnings = [n for n in getattr(results[node_id][0], "notes", []) if n.startswith("warning: ")]
            if warnings:  # a slow plan: reported, never blocking
                ui[node_id] = {"warnings": warnings}
            continue
        try:
            value = getattr(node_class(), node_class.FUNCTION)(**kwargs)
        except (ValidationError, LoadError, SaveError):
            raise
        except Exception as exc:
            raise RunError(_label(node_id, prompt), exc) from None
        if isinstance(value, dict):
            ui[node_id] = value.get("ui", {})
            value = value.get("result", ())
        results[node_id] = tuple(value)
    return ui


def _validate_node(node_id, node, node_class, kwargs, prompt) -> tuple:
    """What a node contributes to validation: config nodes run, a loader (a node class with a
    `plan` classmethod) returns its plan, a sampler checks its image size against the planned model."""
    if hasattr(node_class, "plan"):  # a loader: its whole plan, validated, reading no weights
        return (node_class.plan(**kwargs),) + (None,) * (len(node_class.RETURN_TYPES) - 1)
    if node["class_type"] in CONFIG_NODES:
        return tuple(getattr(node_class(), node_class.FUNCTION)(**kwargs))
    planned = kwargs.get("pipeline")
    if not isinstance(planned, Plan):
        return (None,) * max(1, len(node_class.RETURN_TYPES))
    # A node fed by a planned loader checks the model (the Sampler its size and frame rule, the bridge
    # nodes the family: `check_model`); a node that passes the pipeline on (Apply LoRA) passes the plan.
    check = getattr(node_class, "check_model", None)
    others = {k: v for k, v in kwargs.items() if k != "pipeline"}
    found = check(planned.model, **others) if check is not None else []
    if found:
        raise ValidationError(
            [Problem(p.code, f"{_label(node_id, prompt)}.{p.field}", p.message, p.suggestion) for p in found]
        )
    passes_on = node_class.RETURN_TYPES[:1] == (_declared(node_class)["pipeline"][0],)
    return ((planned,) if passes_on else (None,)) + (None,) * (len(node_class.RETURN_TYPES) - 1)
