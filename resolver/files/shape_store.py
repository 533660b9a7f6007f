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
import threading
from contextlib import contextmanager
from pathlib import Path

from ..known import catalogue
from ..known.class_facts import distribution_versions
from ..user_cache import configured, user_folder
from . import shape_seed
from .inspect_model import thaw

ENV = "PIPEQUANT_SHAPE_CACHE"
FORMAT = shape_seed.FORMAT  # the facts' format: the seed holds the same facts
_VERSIONS: dict | None = None
_batch = threading.local()  # .pending: {path: (digest, shape key, {fact: value})} while a batch is open


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
    pending = getattr(_batch, "pending", None)
    if pending and path in pending and fact in pending[path][2]:
        return pending[path][2][fact]
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


@contextmanager
def batched():
    """Facts put inside are written when the outermost batch of this thread ends, once per shape: a
    plan puts dozens, and each put rewrote its shape's whole file (0.6 s of a new model's plan)."""
    if getattr(_batch, "pending", None) is not None:
        yield
        return
    _batch.pending = {}
    try:
        yield
    finally:
        pending, _batch.pending = _batch.pending, None
        for path, (digest, shape_key, facts) in pending.items():
            _write(path, digest, shape_key, facts)


def put(shape_key: tuple, fact: str, value) -> None:
    """Store one fact beside the others of this shape (at the end of the batch, inside `batched`);
    never fails (an unwritable cache is no cache)."""
    path, digest = _path(shape_key)
    if path is None:
        return
    pending = getattr(_batch, "pending", None)
    if pending is None:
        _write(path, digest, shape_key, {fact: value})
    else:
        pending.setdefault(path, (digest, shape_key, {}))[2][fact] = value


def _write(path: Path, digest: str, shape_key: tuple, facts: dict) -> None:
    """`facts` merged into the shape's file (replaced atomically)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            stored = data["facts"] if isinstance(data, dict) and data.get("key") == digest else {}
        except (OSError, ValueError, KeyError, TypeError):
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        stored.update(facts)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                # dumps, not dump: dump encodes in Python, dumps in C (a T5's name lists: 10 ms)
                f.write(json.dumps({"key": digest, "shape": _shape_json(shape_key), "facts": stored}))
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
