"""Shape facts shipped with the pack for the architectures users load most (FLUX.1-dev, SD3.5 Large,
SDXL): the first plan on a machine answers without importing torch or building a model.

`resolver/data/shape_seed.json` holds what the shape store (shape_store.py) holds after those models
are planned, written from the libraries themselves by `python -m pipequant.testing.shape_seed`,
with the versions that computed it. A fact is taken from it only where those versions are installed
(torch, diffusers and transformers for every fact; the backend's own library too for what it
quantizes), else it is computed the usual way. Configs are compared without bookkeeping fields,
without fields equal to the class's default and, for transformers models, without the fields only a
run reads, so the hub's config.json and one that lists every default find the same facts; any other
difference finds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path

from ..constants import TRANSFORMERS
from ..known import catalogue
from ..known.class_facts import distribution_versions
from ..user_cache import is_off
from .inspect_model import thaw

ENV = "PIPEQUANT_SHAPE_SEED"  # "off": never read the shipped facts
PATH = Path(__file__).resolve().parent.parent / "data" / "shape_seed.json"
FORMAT = 2  # of the facts (here and in shape_store): 2 = a layout's tensors say which the model builds itself
CORE = ("torch", "diffusers", "transformers")
# Config fields that say where or how a file was written, never what is built from it.
BOOKKEEPING = frozenset({"architectures", "transformers_version", "torch_dtype", "dtype", "model_type"})
# transformers config fields read only when the model runs or trains (generation, dropout, init
# scales, special token ids), or only by a decoder the seeded encoders do not have: the hub's files
# carry them in whatever form their writer's version used (T5-XXL's "output_past", "num_decoder_layers").
RUNTIME_FIELDS = frozenset(
    {
        "use_cache",
        "output_attentions",
        "output_past",
        "is_encoder_decoder",
        "num_decoder_layers",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "decoder_start_token_id",
        "initializer_factor",
        "initializer_range",
        "dropout",
        "dropout_rate",
        "attention_dropout",
        "classifier_dropout",
    }
)
_MISSING = object()


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def seed_key(shape_key: tuple, defaults: dict | None) -> str | None:
    """The seed's name for a shape: ("backend", name) as it is; a model's (library, class, config)
    by its fields that differ from the class's `defaults` (None: the class is not in the seed)."""
    if len(shape_key) == 2:
        return _canonical(list(shape_key))
    library, class_name, config = shape_key
    if defaults is None:
        return None
    fields = {}
    for k, v in thaw(config).items():
        if str(k).startswith("_") or k in BOOKKEEPING or (library == TRANSFORMERS and k in RUNTIME_FIELDS):
            continue
        if k in defaults and _canonical(defaults[k]) == _canonical(v):
            continue  # what the class builds when the field is left out
        fields[k] = v
    material = _canonical([library, class_name, fields])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def fact_modules(shape_key: tuple, fact: str) -> tuple[str, ...]:
    """The libraries whose code decides this fact."""
    backend = shape_key[1] if len(shape_key) == 2 else fact.split(":")[1] if fact.startswith("quantized:") else None
    extra = tuple(catalogue.get_backend(backend).modules) if backend in catalogue.backend_names() else ()
    return CORE + extra


@cache
def _seed() -> dict:
    try:
        data = json.loads(PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


@cache
def _matches(modules: tuple[str, ...]) -> bool:
    recorded = _seed().get("versions", {})
    return all(recorded.get(m, _MISSING) == (distribution_versions(m) or None) for m in modules)


def get(shape_key: tuple, fact: str):
    """The shipped fact (JSON data) or None."""
    if is_off(os.environ.get(ENV, "")):
        return None
    seed = _seed()
    if not seed:
        return None
    defaults = seed["defaults"].get(f"{shape_key[0]}.{shape_key[1]}") if len(shape_key) == 3 else None
    key = seed_key(shape_key, defaults)
    facts = seed["shapes"].get(key) if key is not None else None
    if not isinstance(facts, dict) or fact not in facts or not _matches(fact_modules(shape_key, fact)):
        return None
    value = facts[fact]
    if isinstance(value, dict) and set(value) == {"set"}:  # a name list kept once, shared by facts
        return seed["sets"][value["set"]]
    return value
