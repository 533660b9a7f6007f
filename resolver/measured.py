"""Measured speed (and size) figures per backend and quant type, from ``data/measurements.json``.

One data file, not constants in code: a benchmark that appends a row changes what the planner and
the slow-plan warnings say without a code change. A figure that was never measured is ``None``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).with_name("data") / "measurements.json"
CPU = "cpu"


@lru_cache(maxsize=1)
def data() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def generation(compute_capability: tuple[int, int] | list | None) -> str:
    """GPU generation name for a compute capability; ``"cpu"`` for None."""
    if compute_capability is None:
        return CPU
    cc = tuple(compute_capability)
    best = None
    for name, first in data()["generations"].items():
        if cc >= tuple(first) and (best is None or tuple(first) > tuple(data()["generations"][best])):
            best = name
    return best or "turing"


def rows(backend: str | None = None, quant_type: str | None = None) -> list[dict]:
    return [r for r in data()["rows"]
            if (backend is None or r["backend"] == backend) and (quant_type is None or r["quant_type"] == quant_type)]


def speed_factor(backend: str | None, quant_type: str, gen: str, mode: str = "eager") -> dict | None:
    """``{"speed": float, "source": str}`` for one plan on one generation, or None if never measured.
    ``backend`` None means unquantized (``quant_type`` is then the dtype name)."""
    for r in data()["rows"]:
        if r["backend"] == backend and r["quant_type"] == quant_type and r["generation"] == gen and r["mode"] == mode:
            return {"speed": r["speed"], "source": data()["sources"].get(r["source"], r["source"])}
    return None
