"""Model folders: only pipelines under the configured roots load, by name, never by free path."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .problems import Problem, ValidationError
from .suggest import did_you_mean

ENV_VAR = "PIPEQUANT_MODELS"
MAX_DEPTH = 2  # "name" or "org/name" under a root


def roots_from_env() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def list_pipelines(roots: Iterable[Path]) -> list[str]:
    """Names (relative, '/'-separated) of folders with a model_index.json, whose real location
    stays inside their root (a symlink leaving the root is not listed)."""
    names: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        real_root = root.resolve()
        for index in sorted(root.glob("model_index.json")) + sorted(root.glob("*/model_index.json")) + sorted(
                root.glob("*/*/model_index.json")):
            folder = index.parent
            if folder == root or not _inside(folder.resolve(), real_root):
                continue
            names.add(folder.relative_to(root).as_posix())
    return sorted(names)


def resolve_model(name: str, roots: Iterable[Path], field: str = "model") -> Path:
    """The folder of pipeline `name` under one of `roots`; refuses anything that would leave them."""
    roots = [Path(r) for r in roots]
    if not isinstance(name, str) or not name.strip():
        raise ValidationError([Problem("model_missing", field, "no model selected",
                                       "pick a pipeline folder (one with model_index.json) from the list")])
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or "\\" in name or len(parts) > MAX_DEPTH:
        raise ValidationError([Problem("model_outside_roots", field,
                                       f'"{name}" is not a model name: paths, "..", and absolute paths are refused',
                                       "pick a pipeline from the model list (folders under the configured diffusers model paths)")])
    for root in roots:
        candidate = root / name
        if (candidate / "model_index.json").is_file():
            real_root = root.resolve()
            if not _inside(candidate.resolve(), real_root):
                raise ValidationError([Problem("model_outside_roots", field,
                                               f'"{name}" is a link that leaves the model folder {root}',
                                               "copy or move the pipeline into the model folder instead of linking it")])
            for path in sorted(candidate.rglob("*")):  # nor may any file or component folder inside it
                if not _inside(path.resolve(), real_root):
                    raise ValidationError([Problem(
                        "model_outside_roots", field,
                        f'"{name}" contains {path.relative_to(candidate).as_posix()}, a link that leaves the model folder {root}',
                        "copy the files into the model folder instead of linking them")])
            return candidate
    if not roots:
        raise ValidationError([Problem("model_not_found", field, f'no pipeline "{name}": no model folders are configured',
                                       "put pipelines under ComfyUI's models/diffusers; on the command line pass "
                                       f"--models DIR or set {ENV_VAR}")])
    where = ", ".join(str(r) for r in roots)
    raise ValidationError([Problem("model_not_found", field, f'no pipeline "{name}" under {where}',
                                   did_you_mean(name, list_pipelines(roots)))])
