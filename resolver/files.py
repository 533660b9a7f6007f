"""Files a spec names (GGUF), found by name under the configured roots only."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

GGUF_ENV_VAR = "PIPEQUANT_GGUF"


def gguf_roots_from_env() -> list[Path]:
    return [Path(p) for p in os.environ.get(GGUF_ENV_VAR, "").split(os.pathsep) if p]


def list_files(roots: Iterable[Path], suffix: str = ".gguf") -> list[str]:
    names = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            real_root = root.resolve()
            for p in root.rglob(f"*{suffix}"):
                if p.is_file() and p.resolve().is_relative_to(real_root):
                    names.add(p.relative_to(root).as_posix())
    return sorted(names)


def find_file(name: str, roots: Iterable[Path]) -> Path | None:
    """The file `name` under one of the roots, or None; never a path outside them."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        return None
    for root in roots:
        candidate = Path(root) / name
        if candidate.is_file() and candidate.resolve().is_relative_to(Path(root).resolve()):
            return candidate
    return None
