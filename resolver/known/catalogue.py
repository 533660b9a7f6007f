"""The backend catalogue: the one place that lists the backends PipeQuant supports.

Each backend must be present in diffusers' own `AUTO_QUANTIZATION_CONFIG_MAPPING`; where the
installed diffusers lacks one, it is left out rather than offered and failing at load.
"""

from __future__ import annotations

import json
from functools import lru_cache

from ..constants import COMPUTE_DTYPES
from .backends import ALL_BACKENDS
from .backends.base import DIFFUSERS, TRANSFORMERS, Backend  # noqa: F401 (re-exported)
from .class_facts import config_mapping, quantization_methods  # noqa: F401 (config_mapping re-exported)


@lru_cache(maxsize=None)
def _backends() -> dict[str, Backend]:
    known = quantization_methods(DIFFUSERS)  # the names only: no import of diffusers to list them
    return {b.name: b for b in ALL_BACKENDS if b.name in known}


def backend_names() -> list[str]:
    return list(_backends())


def get_backend(name: str) -> Backend | None:
    return _backends().get(name)


def all_quant_types() -> dict[str, list[str]]:
    """quant type -> the backends that have it (to say "int8_weight_only belongs to torchao")."""
    out: dict[str, list[str]] = {}
    for backend in _backends().values():
        for q in backend.quant_types:
            out.setdefault(q.name, []).append(backend.name)
    return out


def backend_for_saved(quant_method: str | None) -> Backend | None:
    """The backend that wrote a pre-quantized component (its config.json's quant_method)."""
    return next((b for b in _backends().values() if quant_method and b.saved_as == quant_method), None)


def file_backends() -> list[Backend]:
    """Backends whose weights come from a file of their own (a `gguf_file`)."""
    return [b for b in _backends().values() if b.needs_file]


def quantizers_for(library: str) -> list[str]:
    """The backend families that quantize `library` models on load (advice: "use X, Y or Z")."""
    return list(
        dict.fromkeys(b.family_name for b in _backends().values() if library in b.libraries and not b.needs_file)
    )


def cpu_quantizers_for(library: str) -> list[str]:
    """What quantizes `library` models on this machine without a GPU: a family whose quant types
    all run on CPU by its name, otherwise "<backend> <first quant type that runs on CPU>"."""
    out: list[str] = []
    for b in _backends().values():
        if library not in b.libraries or b.needs_file or not b.cpu_supported(library):
            continue
        on_cpu = [q.name for q in b.quant_types if not q.needs_cuda]
        if not on_cpu:
            continue
        choice = b.family_name if len(on_cpu) == len(b.quant_types) else f"{b.name} {on_cpu[0]}"
        if choice not in out and b.family_name not in out:
            out.append(choice)
    return out


def one_of(names: list[str]) -> str:
    """ "a", "a or b", "a, b or c"."""
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]


def describe() -> dict:
    """The catalogue as JSON-able data (served to the graph editor)."""
    return {"backends": [b.describe() for b in _backends().values()], "compute_dtypes": list(COMPUTE_DTYPES)}


def runs_on_cpu(backend: Backend) -> bool:
    """Whether the backend quantizes every library it takes without a GPU."""
    return all(backend.cpu_supported(library) for library in backend.libraries)


def default_choice(device: str) -> tuple[str, str]:
    """The backend and quant type a new Backend node starts with: the first, in catalogue order,
    that is installed and runs on `device` (on a CPU-only server: nothing that needs a GPU)."""
    from .devices import resolve_device

    backends = list(_backends().values())
    on_cpu = resolve_device(device) == "cpu"
    for backend in backends:
        if not backend.installed() or not backend.global_mode or (on_cpu and not runs_on_cpu(backend)):
            continue
        for quant in backend.quant_types:
            if not (on_cpu and quant.needs_cuda):
                return backend.name, quant.name
    return backends[0].name, backends[0].quant_types[0].name


def options_example(backend_name, quant_type) -> str:
    """An options object that `quant_type` of `backend_name` takes (its first option; a switch shown
    turned from its default), for messages: "{}" where it takes none (or the backend is unknown)."""
    backend = get_backend(backend_name) if isinstance(backend_name, str) else None
    if backend is None:
        return "{}"
    quant = backend.quant_type(quant_type) if isinstance(quant_type, str) else None
    names = list(quant.options) if quant is not None else [o.name for o in backend.options]
    for name in names:
        option = backend.option(name)
        if option is not None and option.default is not None:
            return json.dumps({name: (not option.default) if option.type == "bool" else option.default})
    return "{}"
