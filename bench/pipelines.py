"""The synthetic FLUX-shaped pipelines the benchmarks load, built once and kept between runs.

Built by `pipequant.testing.ensure_pipeline` (random weights, real FLUX.1 layout: double + single
blocks, CLIP, T5, VAE), saved as sharded safetensors like a hub snapshot (`config.SHARD_SIZE`).
Saved pre-quantized copies carry their own marker (`SAVED_MARKER`): source recipe + plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import SHARD_SIZE

SAVED_MARKER = ".pipequant-bench.json"


def default_root() -> Path:
    env = os.environ.get("PIPEQUANT_BENCH_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pipequant-bench"


def folder_name(size: str) -> str:
    from pipequant.testing import pipeline_name

    return pipeline_name("flux", size)


def source_recipe(folder: Path) -> dict:
    """The recipe a built pipeline's marker records (what a saved copy was made from)."""
    from pipequant.testing import MARKER

    return json.loads((Path(folder) / MARKER).read_text())


def marker_matches(folder: Path, recipe: dict) -> bool:
    try:
        return json.loads((folder / SAVED_MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False


def ensure(size: str, root: Path) -> Path:
    """Build `root/<folder_name(size)>` unless it is there already; return it."""
    from pipequant.testing import ensure_pipeline

    return ensure_pipeline("flux", root, size=size, max_shard_size=SHARD_SIZE[size])


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def saved_name(size: str, plan_key: str) -> str:
    return f"flux-{size}-saved-{plan_key}"
