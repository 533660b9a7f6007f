"""What a model's shapes imply, kept on disk between processes: a planner in a fresh process answers
without importing torch or diffusers or building a model on the meta device.

One small JSON file per (library, class, config, library versions), under the user's cache folder
(PIPEQUANT_SHAPE_CACHE overrides it; "off" turns it off). Each holds named facts computed from a
meta-device build (the layout, the float32-kept names per dtype, the quantized names per backend
config). Nothing here is trusted blindly: a file that does not parse or does not match its key is
ignored and rewritten; writes go to a temporary file renamed into place, so a reader never sees half
a file. A fact that is not stored yet is computed the usual way and then stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..known import catalogue
from ..known.class_facts import distribution_versions
from ..user_cache import configured, user_folder
from . import shape_seed
from .inspect_model import thaw

ENV = "PIPEQUANT_SHAPE_CACHE"
FORMAT = shape_seed.FORMAT  # the facts' format: the seed holds the same facts
_VERSIONS: dict | None = None


def folder() -> Path | None:
    return configured(ENV, user_folder("shapes"))


def versions() -> dict:
    """Installed versions of the libraries whose code decides shapes and skip lists (from package
    metadata: nothing is imported). A new version means new facts."""
    global _VERSIONS
    if _VERSIONS is None:
        modules = ["torch", "diffusers", "transformers"]  # and every backend's, as the catalogue names them
        modules += [m for name in catalogue.backend_names() for m in catalogue.get_backend(name).modules]
        _VERSIONS = {m: distribution_versions(m) or None for m in modules}
    return _VERSIONS


def _path(shape_key: tuple) -> tuple[Path | None, str]:
    where = folder()
    material = json.dumps([FORMAT, repr(shape_key), versions()], sort_keys=True)
    digest = hashlib.sha256(material.encode()).hexdigest()[:32]
    return (where / f"{digest}.json" if where is not None else None), digest


def get(shape_key: tuple, fact: str):
    """The stored fact (JSON data), else the one shipped with the pack (shape_seed), else None."""
    found = _stored(shape_key, fact)
    return found if found is not None else shape_seed.get(shape_key, fact)


def _stored(shape_key: tuple, fact: str):
    path, digest = _path(shape_key)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != digest or not isinstance(data.get("facts"), dict):
        return None
    return data["facts"].get(fact)


def _shape_json(shape_key: tuple) -> list:
    """The key as JSON data (what the seed's generator reads back)."""
    return [thaw(part) if isinstance(part, tuple) else part for part in shape_key]


def put(shape_key: tuple, fact: str, value) -> None:
    """Store one fact beside the others of this shape; never fails (an unwritable cache is no cache)."""
    path, digest = _path(shape_key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            facts = data["facts"] if isinstance(data, dict) and data.get("key") == digest else {}
        except (OSError, ValueError, KeyError, TypeError):
            facts = {}
        if not isinstance(facts, dict):
            facts = {}
        facts[fact] = value
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": digest, "shape": _shape_json(shape_key), "facts": facts}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, TypeError, ValueError):
        pass


def export_seed(defaults: dict, min_shared: int = 8) -> dict:
    """This store's facts as the pack ships them (shape_seed): keyed by shape_seed.seed_key with the
    classes' config `defaults`, name lists of at least `min_shared` names kept once."""
    where = folder()
    shapes: dict[str, dict] = {}
    sets: list[list] = []
    set_index: dict[str, int] = {}
    for path in sorted(where.glob("*.json")) if where is not None else ():
        data = json.loads(path.read_text(encoding="utf-8"))
        shape = data["shape"]
        if len(shape) == 3:
            library, class_name, config = shape
            key = shape_seed.seed_key(
                (library, class_name, tuple(config.items())), defaults.get(f"{library}.{class_name}")
            )
        else:
            key = shape_seed.seed_key(tuple(shape), None)
        if key is None:
            continue
        facts = {}
        for fact, value in sorted(data["facts"].items()):
            if isinstance(value, list) and len(value) >= min_shared:
                text = json.dumps(value)
                if text not in set_index:
                    set_index[text] = len(sets)
                    sets.append(value)
                value = {"set": set_index[text]}
            facts[fact] = value
        shapes.setdefault(key, {}).update(facts)
    return {"format": FORMAT, "versions": versions(), "defaults": defaults, "shapes": shapes, "sets": sets}
