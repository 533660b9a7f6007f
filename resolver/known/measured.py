"""Measured speed (and size) figures per backend and quant type, from ``data/measurements.json``.

One data file, not constants in code: a benchmark that appends a row changes what the planner and
the slow-plan warnings say without a code change. A figure that was never measured is ``None``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).parents[1] / "data" / "measurements.json"
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
    return [
        r
        for r in data()["rows"]
        if (backend is None or r["backend"] == backend) and (quant_type is None or r["quant_type"] == quant_type)
    ]


def _row(section: str, backend: str | None, quant_type: str, gen: str, **match) -> dict | None:
    """The first row of `section` for one plan on one generation (and `match`'s fields), or None."""
    for r in data().get(section, []):
        if (
            r["backend"] == backend
            and r["quant_type"] == quant_type
            and r["generation"] == gen
            and all(r.get(k) == v for k, v in match.items())
        ):
            return r
    return None


def compile_figure(backend: str | None, quant_type: str, gen: str) -> dict | None:
    """What compile does to one plan on one generation (never borrowed from another): ``{"factor":
    compiled step speed / eager step speed or None, "fails": why compile fails here or None,
    "source": str}``, or None when compile was never measured there. From the ``compile`` rows
    (failures, measured factors), else from a regional and an eager speed row of ``rows``."""
    r = _row("compile", backend, quant_type, gen)
    if r is not None:
        return {"factor": r.get("factor"), "fails": r.get("fails"), "source": source(r["source"])}
    eager = speed_factor(backend, quant_type, gen, "eager")
    compiled = speed_factor(backend, quant_type, gen, "regional")
    if eager is None or compiled is None:
        return None
    return {"factor": round(compiled["speed"] / eager["speed"], 3), "fails": None, "source": compiled["source"]}


def disk_cache_figure(backend: str, quant_type: str, gen: str) -> dict | None:
    """What the disk cache gains one plan on one generation (never borrowed from another):
    ``{"second_over_first": a cold load that reads the cached copy / the cold first load that
    quantized it, "min_checkpoint_bytes": the smallest component it was measured on, "source":
    str}``, or None where it was never measured."""
    r = _row("disk_cache", backend, quant_type, gen)
    if r is None:
        return None
    return {
        "second_over_first": r["second_over_first"],
        "min_checkpoint_bytes": r["min_checkpoint_bytes"],
        "source": source(r["source"]),
    }


def speed_factor(backend: str | None, quant_type: str, gen: str, mode: str = "eager") -> dict | None:
    """``{"speed": float, "source": str}`` for one plan on one generation, or None if never measured.
    ``backend`` None means unquantized (``quant_type`` is then the dtype name)."""
    r = _row("rows", backend, quant_type, gen, mode=mode)
    return None if r is None else {"speed": r["speed"], "source": source(r["source"])}


def _options_match(row: dict, options: dict) -> int | None:
    """How many of the row's options the spec matches; None when one differs."""
    wanted = row.get("options") or {}
    if any(options.get(k) != v for k, v in wanted.items()):
        return None
    return len(wanted)


def _best(section: str, backend: str | None, quant_type: str, options: dict | None) -> dict | None:
    best, best_score = None, -1
    for r in data().get(section, []):
        if r["backend"] != backend or r["quant_type"] != quant_type:
            continue
        score = _options_match(r, options or {})
        if score is not None and score > best_score:
            best, best_score = r, score
    return best


def storage(backend: str, quant_type: str, options: dict | None = None) -> dict | None:
    """Bytes a quantized Linear weight costs: ``{"bytes_per_weight", "bytes_per_row",
    "bytes_per_layer", "bits_per_weight", "scale_bytes_per_weight", "source"}`` (a row of
    ``storage``; the one whose options match `options` best), or None if never measured."""
    r = _best("storage", backend, quant_type, options)
    if r is None:
        return None
    return {
        "bits_per_weight": r["bits_per_weight"],
        "scale_bytes_per_weight": r["scale_bytes_per_weight"],
        "bytes_per_weight": r["bits_per_weight"] / 8 + r["scale_bytes_per_weight"],
        "bytes_per_row": r.get("bytes_per_row", 0.0),
        "bytes_per_layer": r.get("bytes_per_layer", 0.0),
        "source": source(r["source"]),
    }


def error_proxy(backend: str | None, quant_type: str, options: dict | None = None) -> dict | None:
    """``{"rel_rms_error": float, "source": str}``: relative RMS error of a quantized Linear's output
    on Gaussian weights and inputs (``backend`` None: the unquantized load dtype), or None."""
    r = _best("error", backend, quant_type, options)
    return None if r is None else {"rel_rms_error": r["rel_rms_error"], "source": source(r["source"])}


def working_memory(family: str) -> dict | None:
    """Constants of one model family's sampling working-memory formula (see the data file)."""
    r = data().get("working_memory", {}).get(family)
    return None if r is None else {**r, "source": source(r["source"])}


def source(key: str) -> str:
    return data()["sources"].get(key, key)
