"""Save a quantized pipeline so it loads pre-quantized next time (faster: no quantize-on-load)."""
from __future__ import annotations

import re
from pathlib import Path

from . import catalogue
from .load import LoadResult, diffusers_context
from .problems import Problem, ValidationError

FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def folder_problems(folder_name: str, root: Path | None) -> list[Problem]:
    """Whether `folder_name` is a new plain folder under `root` (PipeQuant never overwrites)."""
    problems = []
    if root is None:
        problems.append(Problem("no_model_folder", "folder_name", "there is no diffusers model folder to save into",
                                "configure a diffusers model path"))
    if not isinstance(folder_name, str) or not FOLDER_NAME.match(folder_name) or ".." in folder_name:
        problems.append(Problem("folder_name_invalid", "folder_name", f"{folder_name!r} is not a plain folder name",
                                "use letters, digits, '.', '_' and '-' only, e.g. flux-nf4"))
    elif root is not None and (root / folder_name).exists():
        problems.append(Problem("folder_exists", "folder_name", f"{root / folder_name} already exists",
                                "pick a new name; PipeQuant never overwrites a model"))
    return problems


def plan_problems(plan) -> list[Problem]:
    """What stops a pipeline loaded with `plan` from being saved (the catalogue's savable rules):
    known before any weight is read, so the editor shows it before Run."""
    problems = []
    for row in plan.modules():
        if row.spec is None:
            continue
        backend = catalogue.get_backend(row.spec.backend)
        if not backend.quant_type(row.spec.quant_type).savable:
            problems.append(Problem("not_savable", "pipeline",
                                    f'"{row.name}" is quantized with {backend.name} {row.spec.quant_type}, which cannot '
                                    "be saved", "save another quant type, and quantize to this one on load", row.name))
        elif row.library not in backend.savable:
            can = [b for b in catalogue.backend_names() if row.library in catalogue.get_backend(b).savable]
            problems.append(Problem("not_savable", "pipeline",
                                    f'"{row.name}" is quantized with {backend.name}, which cannot be saved for a '
                                    f"{row.library} model", f"for {row.name} use one of: {', '.join(can)}", row.name))
    if plan.offload != "none":
        problems.append(Problem("offloaded", "pipeline", "an offloaded pipeline cannot be saved",
                                'load it with offload "none" to save it'))
    return problems


def save_problems(result: LoadResult, folder_name: str, root: Path | None) -> list[Problem]:
    return folder_problems(folder_name, root) + plan_problems(result.plan)


def save(result: LoadResult, folder_name: str, root: Path | None) -> Path:
    problems = save_problems(result, folder_name, root)
    if problems:
        raise ValidationError(problems)
    dest = Path(root) / folder_name
    with diffusers_context():
        result.pipeline.save_pretrained(str(dest), safe_serialization=True)
    return dest
