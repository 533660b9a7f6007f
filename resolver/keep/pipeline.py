"""A pipeline chosen by name from the model roots: check it, plan it, load it.

What the Load node, the runner, the routes and the bench all do with a model name; the roots
(and, inside ComfyUI, the default device) are the caller's, so this never imports ComfyUI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..constants import DEFAULT_DTYPE
from ..decide.plan import Plan
from ..decide.validate import validate
from ..files.inspect_model import inspect_model
from ..files.roots import resolve_model
from ..files.variant import problems as variant_problems
from ..problems import Problem, ValidationError
from .cache import COMPONENT_CACHE, ComponentCache
from .load import LoadResult, load_plan, plan_load


def check_model(
    model: str,
    roots: Iterable[Path],
    *,
    dtype: str = DEFAULT_DTYPE,
    device: str | None = None,
    offload: str = "none",
    allow_pickle: bool = False,
    compile: str = "none",
    variant: str | None = None,
) -> list[Problem]:
    """Problems of the loader's own inputs (no quantization spec), reading no weights."""
    try:
        folder = resolve_model(model, roots)
        info = inspect_model(folder, variant=variant)
        return variant_problems(info, variant) + validate(
            None, info, dtype=dtype, device=device, offload=offload, allow_pickle=allow_pickle is True, compile=compile
        )
    except ValidationError as exc:
        return exc.problems


def files_key(model: str, roots: Iterable[Path]) -> str:
    """Changes when the pipeline's files change on disk ("" for a name that does not resolve)."""
    try:
        return str(hash(inspect_model(resolve_model(model, roots)).mtime_key))
    except ValidationError:
        return ""


def plan_named(
    model: str,
    spec=None,
    *,
    roots: Iterable[Path],
    gguf_roots: Iterable[Path] = (),
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    allow_pickle: bool = False,
    compile: str = "none",
    variant: str | None = None,
) -> Plan:
    """Validate the whole plan for pipeline `model` (a name under `roots`); raises ValidationError
    with every problem. Reads no weights. Only an explicit True opts in to pickle weights."""
    folder = resolve_model(model, roots)
    return plan_load(
        folder,
        spec,
        dtype=dtype,
        device=device,
        offload=offload,
        gguf_roots=gguf_roots,
        allow_pickle=allow_pickle is True,
        compile=compile,
        variant=variant,
    )


def first_use_notes(plan: Plan) -> list[str]:
    """What this load does first beyond loading (e.g. quanto builds its C++ extension), once each."""
    notes = [r.backend.first_use_note(r.spec.quant_type, plan.device) for r in plan.modules() if r.spec is not None]
    return list(dict.fromkeys(n for n in notes if n))


def load_named(
    model: str,
    spec=None,
    *,
    roots: Iterable[Path],
    gguf_roots: Iterable[Path] = (),
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    allow_pickle: bool = False,
    cache: ComponentCache | None = COMPONENT_CACHE,
    progress: Callable[[int, int, str], None] | None = None,
) -> LoadResult:
    plan = plan_named(
        model,
        spec,
        roots=roots,
        gguf_roots=gguf_roots,
        dtype=dtype,
        device=device,
        offload=offload,
        allow_pickle=allow_pickle,
    )
    return load_plan(plan, allow_pickle=allow_pickle is True, cache=cache, progress=progress)
