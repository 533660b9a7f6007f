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
import inspect
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..constants import DENOISERS
from ..decide.plan import PREQUANTIZED
from ..files.roots import contained, list_files
from ..known import catalogue
from ..problems import Problem, ValidationError
from ..safe_files import FileProblem
from ..suggest import did_you_mean
from . import lora_check

ENV_VAR = "PIPEQUANT_LORAS"
SUFFIX = ".safetensors"
MAX_LORAS_ENV = "PIPEQUANT_MAX_LORAS"
DEFAULT_MAX_ADAPTERS = 8
MAX_ADAPTERS: int | None = None  # set to override $PIPEQUANT_MAX_LORAS (tests); see max_adapters()
STRENGTH_RANGE = (-4.0, 4.0)
# Which denoiser(s) a LoRA goes to, on pipelines with several (Wan 2.2 A14B: a high-noise `transformer`
# and a low-noise `transformer_2`). "auto": the one(s) the file targets (its keys, else its name, else all).
EXPERT_AUTO, EXPERT_ALL = "auto", "all experts"
EXPERT_ROLES = {"transformer": "high noise", "transformer_2": "low noise"}  # Wan 2.2's names for them
EXPERTS = (EXPERT_AUTO, EXPERT_ALL, *(f"{c} ({r})" for c, r in EXPERT_ROLES.items()))
# A file name's words that say which expert it was trained for (the hub's "high_noise_model.safetensors",
# "…_HIGH_fp16", "…LowNoise…").
_NAME_HINTS = {"transformer": ("high", "highnoise"), "transformer_2": ("low", "lownoise")}
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
log = logging.getLogger("pipequant")
_lock = threading.RLock()
_recent: list[str] = []  # adapter names, least recently activated first


def max_adapters() -> int:
    """Adapters kept loaded per set of modules beyond the active stack (LRU): $PIPEQUANT_MAX_LORAS,
    read when used. A malformed value falls back with a warning naming the variable: a setting
    must never stop ComfyUI from loading the pack."""
    if MAX_ADAPTERS is not None:
        return MAX_ADAPTERS
    raw = os.environ.get(MAX_LORAS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ADAPTERS
    try:
        value = int(raw)
        if value < 1:
            raise ValueError(raw)
    except ValueError:
        log.warning(
            "PipeQuant: %s=%r is not a whole number >= 1; keeping up to %d LoRAs loaded",
            MAX_LORAS_ENV,
            raw[:40],
            DEFAULT_MAX_ADAPTERS,
        )
        return DEFAULT_MAX_ADAPTERS
    return value


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
    expert: str = EXPERT_AUTO  # one of EXPERTS: which denoiser(s) it goes to where a pipeline has several
    placed: str = ""  # where it went and why, once applied (the Memory Report's note)

    @property
    def adapter_name(self) -> str:
        chosen = "" if self.expert == EXPERT_AUTO else f"|{self.expert}"  # auto keeps the names it always had
        digest = hashlib.sha1(f"{self.path}|{self.file_key}{chosen}".encode()).hexdigest()[:12]
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


def make_spec(
    name: str,
    roots: Iterable[Path],
    strength: float = 1.0,
    strength_text_encoder: float = 1.0,
    expert: str = EXPERT_AUTO,
) -> LoraSpec:
    path = resolve_lora(name, roots)
    if expert not in EXPERTS:
        raise _problem(
            "lora_expert_invalid",
            f"{str(expert)[:60]!r} is not an expert choice",
            f"use one of: {', '.join(EXPERTS)}",
            "expert",
        )
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
        name,
        str(path.resolve()),
        (stat.st_size, stat.st_mtime_ns),
        float(strength),
        float(strength_text_encoder),
        expert,
    )


# -- checking a file against a pipeline, before anything changes -----------------------------------
def _converted_state_dict(pipeline, spec: LoraSpec) -> dict:
    """The file's tensors as diffusers' own converters see them (kohya, xlabs, … → diffusers/peft),
    after every tensor of the file itself was checked (lora_check.check_tensors)."""
    from ..files.safetensors_header import HeaderError, read_header

    try:
        read_header(Path(spec.path))
    except (HeaderError, OSError) as exc:
        raise _problem(
            "lora_malformed",
            f'"{spec.name}" is not a readable safetensors file: {exc}',
            "re-download or re-save the LoRA",
        ) from None
    from safetensors.torch import load_file

    try:
        raw = load_file(spec.path)
    except Exception as exc:  # noqa: BLE001 - a header that passed but data that does not
        raise _problem(
            "lora_malformed",
            f'"{spec.name}" cannot be read ({type(exc).__name__}: {str(exc).strip()[:200]})',
            "re-download or re-save the LoRA",
        ) from None
    lora_check.check_tensors(spec.name, raw)
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


def _file_layers(pipeline, spec: LoraSpec) -> dict[str, lora_check.LayerShapes]:
    """{layer: shapes} of the file as this pipeline class converts it; every check of the file
    alone, done once per file identity."""

    def compute():
        state = _converted_state_dict(pipeline, spec)
        for key in state:
            layer = _layer(key)
            if layer is None or "." not in layer:
                raise _problem(
                    "lora_malformed",
                    f'"{spec.name}" has tensor "{key}", which is not a LoRA weight',
                    "use a LoRA file (lora_A/lora_B or lora_down/lora_up tensors)",
                )
        layers = lora_check.layer_shapes(spec.name, state)
        if not layers:
            raise _problem("lora_malformed", f'"{spec.name}" holds no LoRA tensors', "use a LoRA file")
        return layers

    return lora_check.remember((type(pipeline).__name__, spec.path, spec.file_key), compute)


def _experts(pipeline) -> list[str]:
    """The pipeline's denoisers that can take a LoRA, the main one first."""
    loadable = getattr(pipeline, "_lora_loadable_modules", ())
    return [d for d in DENOISERS if d in loadable and getattr(pipeline, d, None) is not None]


def _label(component: str, experts: Iterable[str] = ("transformer_2",)) -> str:
    """ "transformer_2 (low noise)": the role shown where the pipeline has Wan 2.2's two experts."""
    role = EXPERT_ROLES.get(component)
    shown = role and (component == "transformer_2" or "transformer_2" in experts)
    return f"{component} ({role})" if shown else component


def _same_kind(part: str, expert: str) -> bool:
    """ "transformer_2" is another transformer; "unet" (a file for another family) is not."""
    return part.split("_")[0] == expert.split("_")[0]


def _name_hint(name: str, experts: list[str]) -> str | None:
    """The expert a file's name (folders included) says it was trained for, where it says one."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    said = [e for e in experts if words & set(_NAME_HINTS.get(e, ()))]
    return said[0] if len(said) == 1 else None


def route(pipeline, spec: LoraSpec, parts: Iterable[str]) -> tuple[dict[str, str] | None, str]:
    """Where the file's denoiser layers go: ({denoiser: the file's part whose layers it takes}, why),
    or (None, "") for diffusers' own placement (one denoiser, or a file without denoiser layers, on
    "auto"). `parts`: the components the file's layers name. Raises, naming the valid values, for a
    choice the pipeline lacks or a file that targets no expert of it."""
    experts = _experts(pipeline)
    cls = type(pipeline).__name__
    file_parts = [p for p in DENOISERS if p in set(parts)]
    choice = None if spec.expert in (EXPERT_AUTO, EXPERT_ALL) else spec.expert.split(" ")[0]
    valid = [EXPERT_AUTO, EXPERT_ALL, *(v for v in EXPERTS[2:] if v.split(" ")[0] in experts)]
    if choice is None and (not experts or any(not _same_kind(p, experts[0]) for p in file_parts)):
        return None, ""  # a file for another family: targets() names its unmatched layers
    if choice is not None and choice not in experts:
        raise _problem(
            "lora_expert_invalid",
            f'{cls} has no expert "{spec.expert}" (its denoisers: {", ".join(_label(e, experts) for e in experts) or "none"})',
            f"use one of: {', '.join(valid)}",
            "expert",
        )
    if not file_parts:
        if choice is not None:
            raise _problem(
                "lora_no_expert",
                f'"{spec.name}" holds no denoiser layers, so it cannot go to {_label(choice)}',
                f'set expert to "{EXPERT_AUTO}"',
                "expert",
            )
        return None, ""
    missing = [p for p in file_parts if p not in experts]
    if len(file_parts) > 1:  # one file, one part per expert: each part to its own
        if choice is not None:
            if choice not in file_parts:
                raise _problem(
                    "lora_no_expert",
                    f'"{spec.name}" has layers for {", ".join(map(_label, file_parts))}, none for {_label(choice)}',
                    f"use one of: {', '.join([EXPERT_AUTO, EXPERT_ALL, *map(_label, file_parts)])}",
                    "expert",
                )
            return {choice: choice}, f"the file's {choice} layers, chosen on the node"
        if missing:
            raise _problem(
                "lora_no_expert",
                f'"{spec.name}" targets {", ".join(map(_label, missing))}, which {cls} does not have '
                f"(its denoisers: {', '.join(_label(e, experts) for e in experts)})",
                "use a LoRA made for this model",
                "expert",
            )
        return {p: p for p in file_parts}, "the file's keys name each expert"
    part = file_parts[0]
    if len(experts) == 1 and part == experts[0] and choice in (None, part):
        return None, ""  # one denoiser, the file's: diffusers' own placement, as always
    if choice is not None:
        return {choice: part}, "chosen on the node"
    if spec.expert == EXPERT_ALL:
        return dict.fromkeys(experts, part), "chosen on the node"
    if part in missing:
        raise _problem(
            "lora_no_expert",
            f'"{spec.name}" targets {_label(part)}, which {cls} does not have '
            f"(its denoisers: {', '.join(_label(e, experts) for e in experts) or 'none that takes a LoRA'})",
            f"to load it anyway, set expert to one of: {', '.join(valid[1:])}" if experts else "use another pipeline",
            "expert",
        )
    if part != experts[0]:
        return {part: part}, "the file's keys name it"
    hint = _name_hint(spec.name, experts)
    if hint is not None:
        return {hint: part}, f'the file name says "{EXPERT_ROLES.get(hint, hint)}"'
    return dict.fromkeys(experts, part), "the file names no expert, so it goes to every expert"


def targets(pipeline, spec: LoraSpec) -> dict[str, int]:
    """{component: number of layers} the LoRA changes; raises a specific error for a file that is not
    a LoRA, whose layers are not all in this pipeline (the first unmatched keys named), whose
    shapes do not fit the layers they target, or that targets no expert the pipeline has (route)."""
    if not hasattr(type(pipeline), "load_lora_weights"):
        raise _problem(
            "lora_unsupported_pipeline",
            f"{type(pipeline).__name__} cannot take LoRAs in diffusers",
            "use a pipeline family with LoRA support (FLUX, SD3, SDXL, SD, Sana, …)",
            "pipeline",
        )
    layers = _file_layers(pipeline, spec)
    routes, _ = route(pipeline, spec, {layer.partition(".")[0] for layer in layers})
    loadable = list(getattr(pipeline, "_lora_loadable_modules", ()))
    modules: dict[str, dict[str, object]] = {}
    unmatched, found, fitting = [], {}, []
    for layer, shapes in layers.items():
        part, _, path = layer.partition(".")
        if routes is None or part not in DENOISERS:
            places = [part]
        else:  # a denoiser part goes where the route sends it (a part no expert takes is left out)
            places = [target for target, source in routes.items() if source == part]
        for component in places:
            if component not in loadable or getattr(pipeline, component, None) is None:
                unmatched.append(shapes.key)
                continue
            if component not in modules:
                modules[component] = {
                    n.replace(".base_layer", ""): m
                    for n, m in getattr(pipeline, component).named_modules()
                    if not n.endswith(".base_layer")
                }
            module = modules[component].get(path)
            if module is None:
                unmatched.append(shapes.key)
            else:
                found[component] = found.get(component, 0) + 1
                fitting.append((layer, shapes, module))
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
    for layer, shapes, module in fitting:
        lora_check.check_against(spec.name, layer, shapes, module)
    return found


def placement(pipeline, spec: LoraSpec) -> str:
    """Where the LoRA goes and why, for the report ("" where the pipeline has one denoiser)."""
    experts = _experts(pipeline)
    if len(experts) < 2:
        return ""
    routes, why = route(pipeline, spec, {layer.partition(".")[0] for layer in _file_layers(pipeline, spec)})
    if routes is None:
        return ""
    return f'LoRA "{spec.name}" → {", ".join(_label(t) for t in routes)}: {why}'


def _load_routed(pipeline, spec: LoraSpec, routes: dict[str, str]) -> None:
    """Load the file's denoiser parts into the experts the route names (diffusers' `load_into_<name>`
    for every expert but the main one); the file's other layers go with the first load."""
    first = _experts(pipeline)[0]
    state = _converted_state_dict(pipeline, spec)
    rest = {k: v for k, v in state.items() if k.partition(".")[0] not in DENOISERS}
    for i, (target, source) in enumerate(routes.items()):
        part = {first + k[len(source) :]: v for k, v in state.items() if k.startswith(source + ".")}
        kwargs = {} if target == first else {f"load_into_{target}": True}
        pipeline.load_lora_weights({**part, **(rest if i == 0 else {})}, adapter_name=spec.adapter_name, **kwargs)


def _check_routable(pipeline, spec: LoraSpec, routes: dict[str, str] | None) -> None:
    if not routes:
        return
    first = _experts(pipeline)[0]
    source = inspect.getsource(type(pipeline).load_lora_weights)
    for target in routes:
        if target != first and f"load_into_{target}" not in source:
            raise _problem(
                "lora_expert_unsupported",
                f"diffusers' {type(pipeline).__name__} cannot load a LoRA into {_label(target)}",
                f'set expert to "{_label(first)}"',
                "expert",
            )


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


def _carriers(pipeline, adapter_name: str) -> set[str]:
    try:
        return {c for c, names in pipeline.get_list_adapters().items() if adapter_name in names}
    except (AttributeError, ValueError):
        return set()


def _fingerprint(pipeline, components) -> dict:
    """{component: {parameter or buffer name (peft's wrapping undone): (id, shape, dtype)}} of the
    base model, to verify a failed LoRA load left every shared module exactly as it was."""
    out = {}
    for name in components:
        module = getattr(pipeline, name, None)
        if module is None:
            continue
        entries = {}
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if "lora_" in key or "lora_magnitude_vector" in key:
                continue
            entries[key.replace(".base_layer", "")] = (id(tensor), tuple(tensor.shape), tensor.dtype)
        out[name] = entries
    return out


def _undo(result, spec: LoraSpec, components, before: dict) -> list[str]:
    """After a failed load: remove what was injected, then verify; a component that does not come
    back exactly as it was is released from every cache (the next run loads it fresh). Returns the
    components released."""
    pipeline = result.pipeline
    try:
        if spec.adapter_name in _loaded(pipeline):
            pipeline.delete_adapters(spec.adapter_name)
    except Exception:  # noqa: BLE001 - verified below either way
        pass
    if spec.adapter_name in _recent:
        _recent.remove(spec.adapter_name)
    after = _fingerprint(pipeline, components)
    broken = []
    for name in components:
        module = getattr(pipeline, name, None)
        leftover = module is not None and any(spec.adapter_name in n for n, _ in module.named_parameters())
        if after.get(name) != before.get(name) or leftover:
            broken.append(name)
    for name in broken:
        module = getattr(pipeline, name)
        reason = f'applying the LoRA "{spec.name}" failed and could not be undone'
        if result.holder is not None:
            result.holder.release(module, reason)
        else:
            result.release(reason)
    return broken


def load_adapter(result, spec: LoraSpec, keep: Iterable[str] = ()) -> None:
    """Load the adapter onto the pipeline's modules unless every module it changes carries it
    already. Checked first, every time (a module shared through the cache may carry an adapter
    that another pipeline's modules, e.g. a quantized transformer, cannot take). Should the load
    fail anyway, the modules come back as they were, or are released. `keep`: adapters of the
    stack being applied, never evicted to make room."""
    from .context import diffusers_context

    with _lock:
        pipeline = result.pipeline
        found = check(result, spec)
        routes, _ = route(pipeline, spec, {layer.partition(".")[0] for layer in _file_layers(pipeline, spec)})
        _check_routable(pipeline, spec, routes)
        carried = _carriers(pipeline, spec.adapter_name)
        if set(found) <= carried:
            return
        if carried:  # on a shared module (a text encoder) but not on this pipeline's others
            with diffusers_context():
                pipeline.delete_adapters(spec.adapter_name)
        before = _fingerprint(pipeline, found)
        try:
            with diffusers_context():
                if routes is None:
                    pipeline.load_lora_weights(spec.path, adapter_name=spec.adapter_name)
                else:
                    _load_routed(pipeline, spec, routes)
        except Exception as exc:
            released = _undo(result, spec, found, before)
            note = (
                f"; {', '.join(released)} could not be restored and were unloaded (the next run reloads them)"
                if released
                else "; the pipeline is unchanged"
            )
            message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise _problem(
                "lora_load_failed",
                f'"{spec.name}" could not be applied ({type(exc).__name__}: {message}){note}',
                "use a LoRA trained for this model family and size",
            ) from exc
        _touch(spec.adapter_name)
        _evict(pipeline, keep={spec.adapter_name, *keep})


def _evict(pipeline, keep: set[str]) -> None:
    loaded = _loaded(pipeline)
    surplus = len(loaded) - max(max_adapters(), len(keep))
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
        names = {s.adapter_name for s in stack}
        for spec in stack:
            load_adapter(result, spec, keep=names)  # a stack longer than the limit stays whole
        if not _loaded(pipeline):
            return
        with diffusers_context():
            if not stack:
                pipeline.disable_lora()
                return
            try:
                pipeline.enable_lora()
                carried = pipeline.get_list_adapters()
                pipeline.set_adapters([s.adapter_name for s in stack], [_weights(s, carried) for s in stack])
            except Exception as exc:  # the shared modules must not keep a half-set stack
                pipeline.disable_lora()
                message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise _problem(
                    "lora_activate_failed",
                    f"the LoRA stack could not be switched on ({type(exc).__name__}: {message}); "
                    "every adapter was switched off",
                    "run again; if it persists, reload the pipeline (Unload Models) and check the LoRAs",
                ) from exc
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
