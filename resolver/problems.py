"""Validation problems: every one has a code, the field at fault, a message and a fix."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    code: str  # stable, machine-readable (tests and the web extension key on it)
    field: str  # the input at fault: "quant_type", "options.group_size", "map[transformer].backend", …
    message: str
    suggestion: str = ""
    component: str | None = None
    severity: str = "error"  # "error" blocks a load; "warning" is reported only

    def __str__(self) -> str:
        fix = f" — {self.suggestion}" if self.suggestion else ""
        return f"{self.field}: {self.message}{fix}"

    def to_dict(self) -> dict:
        return asdict(self)


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
