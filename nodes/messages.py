"""Name the node and the input in every message: "Quantization Backend › options.group_sise: …"."""

from __future__ import annotations

from ..resolver.problems import BACKEND, MAP, SPEC, Problem, ValidationError, errors


def node_for(problem: Problem, default: str) -> str:
    """Which node owns a problem when the loader re-validates the whole upstream spec."""
    from .backend import PipeQuantBackend  # the node modules import this one
    from .component_map import PipeQuantComponentMap

    BACKEND_NODE, MAP_NODE = PipeQuantBackend.TITLE, PipeQuantComponentMap.TITLE
    if problem.part == MAP:
        return f"{MAP_NODE} ({problem.entry})"
    if problem.part == BACKEND:
        return f"{BACKEND_NODE} (feeding the map for {problem.entry})"
    if problem.part == SPEC and problem.input != "map":
        return BACKEND_NODE
    return default


def describe(problems: list[Problem], node: str, *, attribute: bool = False) -> str:
    lines = []
    for p in problems:
        owner = node_for(p, node) if attribute else node
        fix = f" — {p.suggestion}" if p.suggestion else ""
        lines.append(f"{owner} › {p.input}: {p.message}{fix}")
    return "\n".join(lines)


class NodeMessage(str):
    """VALIDATE_INPUTS' failure: the text ComfyUI shows on the node, carrying the problems (with
    their codes) for the headless runner."""

    problems: tuple = ()


def validation_result(problems: list[Problem], node: str):
    """What VALIDATE_INPUTS returns: True, or one string ComfyUI shows on the node."""
    bad = errors(problems)
    if not bad:
        return True
    text = NodeMessage(describe(bad, node))
    text.problems = tuple(bad)
    return text


def raise_for(problems: list[Problem], node: str, *, attribute: bool = False) -> None:
    bad = errors(problems)
    if bad:
        raise NodeInputError(bad, describe(bad, node, attribute=attribute))


class NodeInputError(ValidationError):
    """A ValidationError whose text already names the node and input (shown as is by ComfyUI)."""

    def __init__(self, problems: list[Problem], text: str):
        self.text = text
        super().__init__(problems)

    def render(self) -> str:
        return getattr(self, "text", "") or super().render()
