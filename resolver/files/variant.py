"""diffusers weight variants: `model.fp16.safetensors` beside `model.safetensors` (`variant="fp16"`).

A variant is a plain string carried on the Plan; "default" (or empty) means the plain files.
Inspection reads the variant's headers, so validation, the estimate and the load all follow the
files the load will read. A component without files of the variant loads its plain files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..problems import Problem
from ..suggest import did_you_mean

DEFAULT = "default"
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


def normalize(variant) -> str | None:
    """None for the plain files, else the variant's name."""
    return None if variant in (None, "", DEFAULT) else str(variant)


def variant_of(filename: str) -> str | None:
    """`model.fp16.safetensors` / `diffusion_pytorch_model-00001-of-00002.fp16.safetensors` -> "fp16"."""
    parts = filename.split(".")
    if len(parts) == 3 and parts[2] == "safetensors" and parts[0].split("-")[0] in WEIGHT_STEMS and parts[1]:
        return parts[1]
    return None


def variants_in(names: Iterable[str]) -> set[str]:
    """The variants among file paths (relative, '/'-separated)."""
    found = set()
    for name in names:
        tag = variant_of(name.rsplit("/", 1)[-1])
        if tag:
            found.add(tag)
    return found


def folder_variants(folder: Path) -> set[str]:
    """The variants of a pipeline folder's component weights (one level deep, names only)."""
    return variants_in(p.name for p in Path(folder).glob("*/*.safetensors"))


def choices(folders: Iterable[Path]) -> list[str]:
    """ "default" plus every variant found in these pipeline folders: the Load node's list."""
    found: set[str] = set()
    for folder in folders:
        found |= folder_variants(folder)
    return [DEFAULT, *sorted(found)]


def problems(model, variant) -> list[Problem]:
    """A variant no component of the pipeline has files for."""
    variant = normalize(variant)
    if variant is None:
        return []
    if not isinstance(variant, str) or not variant.isidentifier():
        return [
            Problem(
                "variant_invalid",
                "variant",
                f"{variant!r:.40} is not a variant name",
                'use "default" or a name such as "fp16"',
            )
        ]
    available = variants_in(f.name for c in model.components.values() for f in c.all_weight_files)
    if variant not in available:
        have = ", ".join([DEFAULT, *sorted(available)])
        hint = did_you_mean(variant, sorted(available))
        return [
            Problem(
                "variant_missing",
                "variant",
                f'{model.folder.name} has no "{variant}" weight files',
                (hint + "; " if hint else "") + f"it has: {have}",
            )
        ]
    return []
