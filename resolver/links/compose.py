"""How quantization specs compose: a component's name, and Per-Component Maps chained into one map.

The Per-Component Map node, the HTTP routes and the runner apply these same rules; which node a
problem belongs to is on the problem itself (``Problem.part``, ``Problem.entry``).
"""

from __future__ import annotations

from ..problems import Problem, ValidationError
from .spec import BackendSpec, ComponentMap


def component_problems(component) -> list[Problem]:
    """What is wrong with `component` as one component name ([] if nothing)."""
    if isinstance(component, str) and component.strip() and component.strip().replace("_", "").isalnum():
        return []
    return [
        Problem(
            "component_syntax",
            "component",
            f"{component!r} is not a component name",
            'e.g. "transformer" or "text_encoder_2"',
        )
    ]


def chain(component: str, config=None, upstream=None) -> ComponentMap:
    """`upstream` (a map, or None) extended by `component` -> `config` (a global spec, or None to
    keep it unquantized). Raises ValidationError with every problem; the problems' inputs are the
    map's own (`component`, `config`, `map`)."""
    found = component_problems(component)
    if found:
        raise ValidationError(found)
    component = component.strip()
    problems = []
    if config is not None and not isinstance(config, BackendSpec):
        problems.append(
            Problem(
                "expected_global",
                "config",
                "a Per-Component Map was connected where a Quantization Backend is expected",
                "connect a Quantization Backend to `config`, and chain maps through `map`",
            )
        )
    if upstream is not None and not isinstance(upstream, ComponentMap):
        problems.append(
            Problem(
                "expected_map",
                "map",
                "a Quantization Backend was connected to `map`, which chains Per-Component Maps",
                "connect it to `config` instead",
            )
        )
    if isinstance(config, BackendSpec) and config.components not in (None, (component,)):
        problems.append(
            Problem(
                "components_in_map",
                "config",
                f"the connected Quantization Backend lists components ({', '.join(config.components)}); "
                f'in a map it applies to "{component}" only',
                "clear the backend's components field",
            )
        )
    if problems:
        raise ValidationError(problems)
    return (upstream or ComponentMap()).with_entry(component, config)  # raises component_mapped_twice
