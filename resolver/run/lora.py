"""LoRAs on a loaded pipeline: found by name under the LoRA roots, checked before anything changes,
loaded once per pipeline's modules as a named peft adapter, and switched per run.

The pipeline object on a link (`LoadResult`) carries an immutable adapter stack (`loras`). Loaded
components are shared (the component cache, ComfyUI's output cache), so the adapters live on
shared modules: whatever runs a pipeline calls `activate(result)` first, which makes the modules
compute exactly that stack (other adapters stay loaded but inactive; an empty stack disables
them all). A module handed out by the cache is disabled first (`hand_out_plain`), and a save strips
adapters (`strip_adapters`), so no adapter ever reaches a plain pipeline.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..decide.plan import PREQUANTIZED
from ..files.roots import contained, list_files
from ..known import catalogue
from ..problems import Problem, ValidationError
from ..safe_files import FileProblem
from ..suggest import did_you_mean

ENV_VAR = "PIPEQUANT_LORAS"
SUFFIX = ".safetensors"
MAX_ADAPTERS = int(os.environ.get("PIPEQUANT_MAX_LORAS", "8"))  # loaded per set of modules; LRU beyond
STRENGTH_RANGE = (-4.0, 4.0)
# How a converted key names its layer: "<component>.<module path><one of these>".
_LAYER_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_A.bias",
    ".lora_B.bias",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_magnitude_vector",
    ".alpha",
)
_lock = threading.RLock()
_recent: list[str] = []  # adapter names, least recently activated first


def list_loras(roots: Iterable[Path]) -> list[str]:
    return list_files(roots, SUFFIX)


@dataclass(frozen=True)
class LoraSpec:
    """One adapter of a stack: which file (as resolved, with its size and mtime) and how strong."""

    name: str
    path: str
    file_key: tuple[int, int]  # (size, mtime_ns): a changed file is another adapter
    strength: float = 1.0
    strength_text_encoder: float = 1.0

    @property
    def adapter_name(self) -> str:
        digest = hashlib.sha1(f"{self.path}|{self.file_key}".encode()).hexdigest()[:12]
        return f"pq_{digest}"


def _problem(code: str, message: str, suggestion: str, field: str = "lora_name") -> ValidationError:
    return ValidationError([Problem(code, field, message, suggestion)])


def resolve_lora(name: str, roots: Iterable[Path]) -> Path:
    """The LoRA file `name` under one of `roots`, by name only (the model folders' rules)."""
    roots = [Path(r) for r in roots]
    if not isinstance(name, str) or not name.strip():
        raise _problem("lora_missing", "no LoRA selected", "pick a .safetensors file from the list")
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or "\\" in name:
        raise _problem(
            "lora_outside_roots",
            f'"{name}" is not a LoRA name: paths, "..", and absolute paths are refused',
            "pick a LoRA from the list (files under ComfyUI's models/loras)",
        )
    if not name.endswith(SUFFIX):
        raise _problem(
            "lora_not_safetensors",
            f'"{name}" is not a .safetensors file',
            "only safetensors LoRAs load (pickle files can run code): convert it to .safetensors",
        )
    for root in roots:
        candidate = root / name
        if not os.path.lexists(candidate):
            continue
        try:
            inside = contained(candidate, root)
        except FileProblem as exc:
            raise _problem(exc.code, f'"{name}": {exc}', exc.suggestion or "fix or remove that file") from None
        if not inside:
            raise _problem(
                "lora_outside_roots",
                f'"{name}" is a link that leaves the LoRA folder {root}',
                "copy the LoRA into the LoRA folder instead of linking it",
            )
        if not candidate.is_file():
            raise _problem("lora_not_found", f'"{name}" under {root} is not a regular file', "pick a LoRA file")
        return candidate
    if not roots:
        raise _problem(
            "lora_not_found",
            f'no LoRA "{name}": no LoRA folders are configured',
            f"put LoRAs under ComfyUI's models/loras; on the command line pass --loras DIR or set {ENV_VAR}",
        )
    where = ", ".join(str(r) for r in roots)
    raise _problem("lora_not_found", f'no LoRA "{name}" under {where}', did_you_mean(name, list_loras(roots)))


def make_spec(name: str, roots: Iterable[Path], strength: float = 1.0, strength_text_encoder: float = 1.0) -> LoraSpec:
    path = resolve_lora(name, roots)
    for field_name, value in (("strength", strength), ("strength_text_encoder", strength_text_encoder)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not STRENGTH_RANGE[0] <= value <= STRENGTH_RANGE[1]
        ):
            raise _problem(
                "lora_strength_invalid",
                f"{value!r} is not a strength",
                f"use a number from {STRENGTH_RANGE[0]:g} to {STRENGTH_RANGE[1]:g}",
                field_name,
            )
    stat = path.stat()
    return LoraSpec(
        name, str(path.resolve()), (stat.st_size, stat.st_mtime_ns), float(strength), float(strength_text_encoder)
    )


# -- checking a file against a pipeline, before anything changes -----------------------------------
def _converted_state_dict(pipeline, spec: LoraSpec) -> dict:
    """The file's tensors as diffusers' own converters see them (kohya, xlabs, … → diffusers/peft)."""
    from ..files.safetensors_header import HeaderError, read_header

    try:
        read_header(Path(spec.path))
    except (HeaderError, OSError) as exc:
        raise _problem(
            "lora_malformed",
            f'"{spec.name}" is not a readable safetensors file: {exc}',
            "re-download or re-save the LoRA",
        ) from None
    try:
        out = type(pipeline).lora_state_dict(spec.path)
    except Exception as exc:  # a converter's own complaint: the layout is not one diffusers reads
        raise _problem(
            "lora_malformed",
            f'"{spec.name}" matches no LoRA layout diffusers reads ({type(exc).__name__}: {str(exc).strip()[:200]})',
            "use a LoRA in diffusers/peft, kohya or xlabs layout",
        ) from None
    state = out[0] if isinstance(out, tuple) else out
    from diffusers.utils import convert_unet_state_dict_to_peft

    return convert_unet_state_dict_to_peft(dict(state))  # old attn-processor names -> module names


def _layer(key: str) -> str | None:
    for suffix in _LAYER_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def targets(pipeline, spec: LoraSpec) -> dict[str, int]:
    """{component: number of layers} the LoRA changes; raises a specific error for a file that is not
    a LoRA, or whose layers are not all in this pipeline (the first unmatched keys named)."""
    if not hasattr(type(pipeline), "load_lora_weights"):
        raise _problem(
            "lora_unsupported_pipeline",
            f"{type(pipeline).__name__} cannot take LoRAs in diffusers",
            "use a pipeline family with LoRA support (FLUX, SD3, SDXL, SD, Sana, …)",
            "pipeline",
        )
    state = _converted_state_dict(pipeline, spec)
    loadable = list(getattr(pipeline, "_lora_loadable_modules", ()))
    layers = {}
    for key in state:
        layer = _layer(key)
        if layer is None or "." not in layer:
            raise _problem(
                "lora_malformed",
                f'"{spec.name}" has tensor "{key}", which is not a LoRA weight',
                "use a LoRA file (lora_A/lora_B or lora_down/lora_up tensors)",
            )
        layers.setdefault(layer, key)
    if not layers:
        raise _problem("lora_malformed", f'"{spec.name}" holds no LoRA tensors', "use a LoRA file")
    modules: dict[str, set[str]] = {}
    unmatched, found = [], {}
    for layer, key in layers.items():
        component, _, path = layer.partition(".")
        if component not in loadable or getattr(pipeline, component, None) is None:
            unmatched.append(key)
            continue
        if component not in modules:
            modules[component] = {n.replace(".base_layer", "") for n, _ in getattr(pipeline, component).named_modules()}
        if path in modules[component]:
            found[component] = found.get(component, 0) + 1
        else:
            unmatched.append(key)
    if unmatched:
        first = ", ".join(f'"{k}"' for k in unmatched[:3])
        prefixes = sorted({k.split(".")[0] for k in unmatched})
        raise _problem(
            "lora_mismatch",
            f'"{spec.name}" does not fit {type(pipeline).__name__}: {len(unmatched)} of '
            f"{len(layers)} layers are not in this pipeline (first: {first}; the file targets "
            f"{', '.join(prefixes)})",
            "use a LoRA trained for this model family and size",
        )
    return found


def backend_problems(result, components: Iterable[str]) -> list[Problem]:
    """Components the LoRA changes whose quantization cannot take one (the catalogue's measured fact)."""
    loaders = tuple(c.__name__ for c in type(result.pipeline).__mro__)
    problems = []
    for name in components:
        row = result.plan.components.get(name)
        if row is None:
            continue
        if row.spec is not None:
            candidates = [(catalogue.get_backend(row.spec.backend), row.spec.quant_type)]
        elif row.action == PREQUANTIZED:
            method = result.plan.model.components[name].prequantized
            candidates = [
                (catalogue.get_backend(b), None)
                for b in catalogue.backend_names()
                if (catalogue.get_backend(b).quant_method or b) == method
            ]
        else:
            continue
        for backend, quant_type in candidates:
            why = backend.lora_support(quant_type, loaders) if backend is not None else None
            if why:
                fix = (
                    f'keep "{name}" unquantized through a Per-Component Map (component "{name}", no config)'
                    if row.action != PREQUANTIZED
                    else f'load "{name}" from an unquantized copy'
                )
                problems.append(Problem("lora_backend_unsupported", "lora_name", f'"{name}": {why}', fix, name))
                break
    return problems


def check(result, spec: LoraSpec) -> dict[str, int]:
    """Every check before a LoRA touches the pipeline; returns the components it changes."""
    found = targets(result.pipeline, spec)
    problems = backend_problems(result, found)
    if problems:
        raise ValidationError(problems)
    return found


# -- applying a stack -----------------------------------------------------------------------------
def _loaded(pipeline) -> set[str]:
    try:
        return {a for names in pipeline.get_list_adapters().values() for a in names}
    except (AttributeError, ValueError):
        return set()


def _touch(name: str) -> None:
    if name in _recent:
        _recent.remove(name)
    _recent.append(name)


def load_adapter(result, spec: LoraSpec) -> None:
    """Load the adapter onto the pipeline's modules unless it is there already (checked first)."""
    from .context import diffusers_context

    with _lock:
        pipeline = result.pipeline
        if spec.adapter_name in _loaded(pipeline):
            return
        check(result, spec)
        with diffusers_context():
            pipeline.load_lora_weights(spec.path, adapter_name=spec.adapter_name)
        _touch(spec.adapter_name)
        _evict(pipeline, keep={spec.adapter_name})


def _evict(pipeline, keep: set[str]) -> None:
    loaded = _loaded(pipeline)
    surplus = len(loaded) - MAX_ADAPTERS
    for name in [n for n in _recent if n in loaded and n not in keep][: max(surplus, 0)]:
        pipeline.delete_adapters(name)
        _recent.remove(name)


def _weights(spec: LoraSpec, carried: dict[str, list[str]]) -> dict[str, float]:
    """Per-component strengths of the components that carry this adapter: text encoders get
    strength_text_encoder, the rest strength."""
    return {
        c: (spec.strength_text_encoder if c.startswith("text_encoder") else spec.strength)
        for c, names in carried.items()
        if spec.adapter_name in names
    }


def activate(result) -> None:
    """Make the pipeline's modules compute exactly `result.loras` (call right before running it)."""
    from .context import diffusers_context

    with _lock:
        pipeline = result.pipeline
        stack = tuple(getattr(result, "loras", ()))
        for spec in stack:
            load_adapter(result, spec)
        if not _loaded(pipeline):
            return
        with diffusers_context():
            if not stack:
                pipeline.disable_lora()
                return
            pipeline.enable_lora()
            carried = pipeline.get_list_adapters()
            pipeline.set_adapters([s.adapter_name for s in stack], [_weights(s, carried) for s in stack])
        for spec in stack:
            _touch(spec.adapter_name)


def hand_out_plain(module) -> None:
    """A cached component that carries adapters is handed out with them disabled (diffusers
    injects text-encoder LoRAs without transformers' adapter bookkeeping: ask the layers)."""
    if not any("lora" in n for n, _ in module.named_parameters()):
        return  # nothing was ever injected (no peft import for the common case)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(False)


def strip_adapters(pipeline) -> None:
    """Remove every adapter (the modules get their plain layers back), e.g. before saving."""
    from .context import diffusers_context

    with _lock:
        if _loaded(pipeline):
            with diffusers_context():
                pipeline.unload_lora_weights()
