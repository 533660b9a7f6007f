"""The one way from the Load node's inputs to a validated plan: resolve, inspect, validate, plan.

The Load node, the editor's routes, the runner's `validate` and the auto planner all call
`prepare`, so they cannot disagree about a model, a variant or an estimate. Reads no weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..constants import DEFAULT_DTYPE
from ..files.inspect_model import ModelInfo, inspect_model
from ..files.roots import resolve_model
from ..files.variant import problems as variant_problems
from ..problems import Problem, ValidationError, errors
from .estimate import estimate
from .fits import fit_problems
from .plan import Plan, make_plan
from .validate import validate


@dataclass
class Prepared:
    """What `prepare` found: the model (None when it did not resolve), every problem (errors and
    warnings), and the plan when there is no error."""

    model: ModelInfo | None
    problems: list[Problem]
    plan: Plan | None = None
    _estimate: dict | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not errors(self.problems)

    def plan_or_raise(self) -> Plan:
        """The plan; ValidationError with every error when there is none."""
        if self.plan is None:
            raise ValidationError(errors(self.problems) or self.problems)
        return self.plan

    def estimate(self) -> dict:
        """The plan's bytes per component (computed once; raises ValidationError for a config that
        cannot be built within bounds)."""
        if self._estimate is None:
            self._estimate = estimate(self.plan_or_raise())
        return self._estimate

    def fit_problems(self, memory=None) -> list[Problem]:
        """Where the plan's weights will not fit the machine (`decide.fits`): an error for a certain
        out-of-memory, a warning where it is tight; each names the auto plan or offload as the fix."""
        return fit_problems(self.plan_or_raise(), self.estimate(), memory)


def prepare(
    model: str | Path | None,
    quantization=None,
    *,
    roots: Iterable[Path] | None = None,
    gguf_roots: Iterable[Path] = (),
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    allow_pickle: bool = False,
    variant: str | None = None,
    compile: str = "none",
    plan: bool = True,
) -> Prepared:
    """Check the Load node's inputs against the model and plan them. `model` is a name under
    `roots`, or a pipeline folder when `roots` is None. `plan=False` stops after validation (the
    editor's live check of the loader's own inputs). Only an explicit True opts in to pickle weights."""
    info, problems = None, []
    if model is not None:  # the editor checks a spec before a model is picked
        try:
            folder = Path(model) if roots is None else resolve_model(model, roots)
            info = inspect_model(folder, variant=variant)
            problems = variant_problems(info, variant)
        except ValidationError as exc:
            problems = list(exc.problems)
    problems += validate(
        quantization,
        info,
        dtype=dtype,
        device=device,
        offload=offload,
        gguf_roots=gguf_roots,
        allow_pickle=allow_pickle is True,
        compile=compile,
    )
    prepared = Prepared(info, problems)
    if plan and info is not None and prepared.ok:
        made = make_plan(quantization, info, dtype=dtype, device=device, offload=offload, gguf_roots=gguf_roots)
        made.notes += [f"warning: {p}" for p in problems if p.severity == "warning"]
        made.variant = info.variant
        prepared.plan = made
    return prepared


def files_key(model: str, roots: Iterable[Path]) -> str:
    """Changes when the pipeline's files change on disk ("" for a name that does not resolve)."""
    try:
        return str(hash(inspect_model(resolve_model(model, roots)).mtime_key))
    except ValidationError:
        return ""


def first_use_notes(plan: Plan) -> list[str]:
    """What this load does first beyond loading (e.g. quanto builds its C++ extension), once each."""
    notes = [r.backend.first_use_note(r.spec.quant_type, plan.device) for r in plan.modules() if r.spec is not None]
    return list(dict.fromkeys(n for n in notes if n))
