"""Validation problems: every one has a code, where it is (part, component, input), a message and a fix.

Where a problem is, structured: ``input`` is the input at fault as its node names it
("quant_type", "options.group_size", "component", "dtype", …); ``entry`` is the Per-Component Map
entry (a component name) whose part is at fault, None for the global spec and the loader's own
inputs; ``part`` says which node that is (:data:`SPEC`, :data:`BACKEND`, :data:`MAP`, :data:`LOAD`).
``field`` renders the location as one readable string ("map[transformer].backend").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

#: The inputs of a Quantization Backend node (a spec's own fields).
SPEC_FIELDS = ("backend", "quant_type", "compute_dtype", "components", "options", "gguf_file")

# Which node a problem belongs to.
SPEC = "spec"  # the node connected to the loader's `quantization` (a Backend, or the last Map)
BACKEND = "backend"  # the Quantization Backend feeding map entry `entry`
MAP = "map"  # the Per-Component Map node of entry `entry`
LOAD = "load"  # the loader's own inputs (model, dtype, device, offload, …)


@dataclass(frozen=True)
class Problem:
    code: str  # stable, machine-readable (tests and the web extension key on it)
    input: str  # the input at fault: "quant_type", "options.group_size", "component", "dtype", …
    message: str
    suggestion: str = ""
    component: str | None = None  # the pipeline component the problem concerns, if one
    severity: str = "error"  # "error" blocks a load; "warning" is reported only
    entry: str | None = None  # the map entry whose Backend/Map node is at fault (None: global / loader)

    @property
    def part(self) -> str:
        spec_input = self.input.split(".")[0] in SPEC_FIELDS
        if self.entry is not None:
            return BACKEND if spec_input else MAP
        return SPEC if spec_input or self.input == "map" else LOAD

    @property
    def field(self) -> str:
        return f"map[{self.entry}].{self.input}" if self.entry is not None else self.input

    def at(self, entry: str | None) -> Problem:
        """The same problem, located in map entry `entry` (its Backend's inputs or its Map's
        `component`); a problem with the loader's own inputs (e.g. offload) stays on the loader."""
        if self.input.split(".")[0] in SPEC_FIELDS or self.input == "component":
            return replace(self, entry=entry)
        return self

    def __str__(self) -> str:
        fix = f" — {self.suggestion}" if self.suggestion else ""
        return f"{self.field}: {self.message}{fix}"

    def to_dict(self) -> dict:
        return {**asdict(self), "field": self.field, "part": self.part}


class ValidationError(ValueError):
    """The pack's own error for bad input: carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem], context: str = ""):
        self.problems = list(problems)
        self.context = context
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.context}: " if self.context else ""
        lines = [str(p) for p in self.problems]
        return head + (lines[0] if len(lines) == 1 else "\n  - " + "\n  - ".join(lines))

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
