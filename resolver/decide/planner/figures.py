"""Measured component errors on the user's own model (written by Plan Quality Check), read here.

One small JSON file per measurement under $PIPEQUANT_QUALITY_CACHE ("off": none), default
~/.cache/pipequant/quality. A figure belongs to (model files, component, plan, library versions):
the planner looks it up by exactly that (`plan_key`); the check's own cache also keys on the prompt,
seed and size it measured with (`entry_key`). Reading needs no weights and imports no backend.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...files.inspect_model import ModelInfo
from ...known import catalogue
from ...known.class_facts import distribution_versions
from ...safe_files import FileProblem, read_json_object
from ...user_cache import configured, user_folder

ENV_FOLDER = "PIPEQUANT_QUALITY_CACHE"  # a folder, or "off"
FORMAT = 1  # bump when the key material or the entry layout changes
WRITER = "pipequant quality check"  # every entry says who wrote it: nothing else is read or replaced
SUFFIX = ".quality.json"
MAX_ENTRIES = 10_000  # a folder is read whole: bounded
MAX_ENTRY_BYTES = 256 * 1024


def folder() -> Path | None:
    return configured(ENV_FOLDER, user_folder("quality"))


def library_versions(backend: str | None) -> dict[str, str]:
    """Installed versions that change a quantized module's numbers (no import of the libraries)."""
    names = ["torch", "diffusers", "transformers"]
    if backend is not None:
        names += list(catalogue.get_backend(backend).modules)
    return {n: distribution_versions(n) or "absent" for n in names}


def normalized_options(backend: str | None, options: dict) -> dict:
    """The options that differ from the backend's defaults (so {} and the defaults spelled out match)."""
    if backend is None:
        return {}
    known = catalogue.get_backend(backend)
    out = {}
    for name, value in sorted((options or {}).items()):
        option = known.option(name)
        if option is None or value != option.default:
            out[name] = value
    return out


def plan_key(
    model: ModelInfo, component: str, backend: str | None, quant_type: str | None, options: dict, load_dtype: str
) -> str:
    """What a figure is for: the component's files, its plan and the library versions."""
    prefix = component + "/"
    material = {
        "format": FORMAT,
        "model": model.folder.name,
        "component": component,
        "class": model.components[component].class_name if component in model.components else None,
        "files": sorted([rel, size, mtime] for rel, mtime, size in model.mtime_key if rel.startswith(prefix)),
        "plan": [backend, quant_type, normalized_options(backend, options)],
        "load_dtype": load_dtype,
        "versions": library_versions(backend),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def entry_key(plan: str, inputs: dict) -> str:
    """One measurement: a plan key and the inputs it was measured on (prompt, seed, steps, size)."""
    material = json.dumps({"plan": plan, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def read_entries(where: Path | None = None) -> list[dict]:
    """Every readable entry this pack wrote (others and broken files are skipped, never touched)."""
    where = where if where is not None else folder()
    if where is None or not where.is_dir():
        return []
    out = []
    for i, path in enumerate(sorted(where.glob("*" + SUFFIX))):
        if i >= MAX_ENTRIES:
            break
        try:
            entry = read_json_object(path, limit=MAX_ENTRY_BYTES)
        except FileProblem:
            continue
        if entry.get("written_by") == WRITER and entry.get("format") == FORMAT:
            out.append(entry)
    return out


def measured_error(key: str, entries: list[dict] | None = None) -> dict | None:
    """The newest figure for a plan key: {"relative_error", "measured_at", "inputs"}, or None."""
    found = [e for e in (read_entries() if entries is None else entries) if e.get("plan_key") == key]
    if not found:
        return None
    newest = max(found, key=lambda e: e.get("measured_at", 0))
    value = newest.get("relative_error")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return {"relative_error": float(value), "measured_at": newest.get("measured_at"), "inputs": newest.get("inputs")}
