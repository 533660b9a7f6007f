"""The synthetic FLUX-shaped pipelines the benchmarks load, built once and kept between runs.

Built with `resolver.tiny.build_flux` (random weights, real FLUX.1 layout: double + single
blocks, CLIP, T5, VAE) and saved as sharded safetensors like a hub snapshot. A folder counts
as built only when its marker (written last) matches the recipe.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .config import SHARD_SIZE

RECIPE_VERSION = 1
MARKER = ".pipequant-bench.json"


def default_root() -> Path:
    env = os.environ.get("PIPEQUANT_BENCH_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pipequant-bench"


def folder_name(size: str) -> str:
    return f"flux-{size}"


def _recipe(size: str) -> dict:
    from pipequant.resolver.tiny import flux_size_kwargs

    return {"size": size, "kwargs": flux_size_kwargs(size), "max_shard_size": SHARD_SIZE[size],
            "recipe_version": RECIPE_VERSION}


def marker_matches(folder: Path, recipe: dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False


def ensure(size: str, root: Path) -> Path:
    """Build `root/flux-<size>` unless it is there already; return it."""
    from pipequant.resolver.tiny import build_flux

    recipe = _recipe(size)
    target = Path(root) / folder_name(size)
    if marker_matches(target, recipe):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        build_flux(tmp, **recipe["kwargs"], max_shard_size=recipe["max_shard_size"])
        (tmp / MARKER).write_text(json.dumps(recipe, sort_keys=True) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def saved_name(size: str, plan_key: str) -> str:
    return f"flux-{size}-saved-{plan_key}"
