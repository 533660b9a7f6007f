"""Validation: every problem at once, each with a code, the field, a message and a fix.

It covers what `PipelineQuantizationConfig` rejects and what diffusers silently accepts (typos in
component names, configs for tokenizers, unknown options). It reads no weights: only
model_index.json, config files and file headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..constants import COMPILE_MODES, COMPUTE_DTYPES, DEFAULT_DTYPE, LOAD_DTYPES
from ..files.inspect_model import ModelInfo, meta_modules
from ..files.roots import find_file, list_files
from ..known import catalogue, devices
from ..known.backends.base import Backend, Option
from ..links.spec import BackendSpec, ComponentMap
from ..problems import Problem, ValidationError
from ..suggest import closest, did_you_mean
from .plan import default_components
from .slow_plan import compile_warnings, slow_plan_warnings


def validate(
    spec,
    model: ModelInfo | None = None,
    *,
    dtype: str = DEFAULT_DTYPE,
    device: str | None = None,
    offload: str = "none",
    gguf_roots: Iterable[Path] = (),
    allow_pickle: bool = False,
    may_feed_map: bool = False,
    compile: str = "none",
) -> list[Problem]:
    """All problems of loading `model` with `spec` (None: no quantization). `may_feed_map`: a
    global spec checked on its own (the Backend node) that may yet feed a Per-Component Map, so
    a backend that cannot quantize a whole pipeline is no problem there."""
    gguf_roots = list(gguf_roots)
    problems: list[Problem] = []
    if dtype not in LOAD_DTYPES:
        problems.append(
            Problem("dtype_unknown", "dtype", f'unknown dtype "{dtype}"', did_you_mean(str(dtype), LOAD_DTYPES))
        )
        dtype = DEFAULT_DTYPE
    if device is not None:
        problems += _check_device(device, offload)
    target = devices.resolve_device(device) if device and devices.is_known_device(device) else None
    if compile not in COMPILE_MODES:
        problems.append(
            Problem(
                "compile_unknown",
                "compile",
                f'unknown compile mode "{compile}"',
                did_you_mean(str(compile), COMPILE_MODES),
            )
        )
        compile = "none"

    entries = list(_entries(spec, model, problems, may_feed_map))
    for entry, spec_one, components in entries:
        found = _check_backend_spec(spec_one, dtype, target, offload, gguf_roots, model, components)
        problems += [p.at(entry) for p in found]
    if model is not None and target is not None and not any(p.severity == "error" for p in problems):
        # a plan that cannot load gets its errors only; how fast it would run comes after
        assigned = {name: spec_one for _, spec_one, components in entries for name in components}
        problems += slow_plan_warnings(assigned, model, target, compile)
        problems += compile_warnings(assigned, model, target, compile)
    if model is not None and not allow_pickle:
        problems += _check_pickle(model)
    return problems


# -- what a spec applies to ------------------------------------------------------------------
def _entries(spec, model: ModelInfo | None, problems: list[Problem], may_feed_map: bool = False):
    """(map entry or None, BackendSpec, component names it applies to) for each part of the spec."""
    if spec is None:
        return []
    if isinstance(spec, ComponentMap):
        if not spec.entries:
            problems.append(
                Problem(
                    "empty_map",
                    "map",
                    "the Per-Component Map is empty: nothing would be quantized",
                    "add a component, or disconnect the map",
                    severity="warning",
                )
            )
        out = []
        for name, one in spec.entries:
            found = _check_component_name(name, "component", model) if model is not None else []
            problems.extend(p.at(name) for p in found)
            if one is not None:  # a bad name is reported above; its backend is still checked
                out.append((name, one, [] if found else [name]))
        return out
    if isinstance(spec, BackendSpec):
        backend = catalogue.get_backend(spec.backend)
        if backend is not None and not backend.global_mode and not may_feed_map:
            why = f": a {backend.file_suffix} file holds the weights of one model" if backend.needs_file else ""
            problems.append(
                Problem(
                    "gguf_in_global",
                    "backend",
                    f"{backend.file_kind or backend.name} cannot quantize a whole pipeline{why}",
                    'feed this Quantization Backend into a Per-Component Map with component "transformer" (or "unet")',
                )
            )
        if spec.components is not None and not spec.components:
            problems.append(
                Problem(
                    "empty_components",
                    "components",
                    "the component list is empty",
                    "leave it blank to quantize every model component, or name some",
                )
            )
        if model is None:
            return [(None, spec, list(spec.components or []))]
        if spec.components is None:
            names = default_components(spec, model) if catalogue.get_backend(spec.backend) else []
        else:
            names = []
            for name in spec.components:
                found = _check_component_name(name, "components", model)
                problems.extend(found)
                if not found:
                    names.append(name)
        return [(None, spec, names)]
    problems.append(
        Problem(
            "spec_malformed",
            "quantization",
            f"expected a quantization config, got {type(spec).__name__}",
            "connect a Quantization Backend or Per-Component Map node",
        )
    )
    return []


def _check_component_name(name: str, field: str, model: ModelInfo) -> list[Problem]:
    info = model.components.get(name)
    if info is None:
        return [
            Problem(
                "unknown_component",
                field,
                f'{model.pipeline_class} has no component "{name}"',
                did_you_mean(name, model.module_names),
                name,
            )
        ]
    if info.prequantized:
        return [
            Problem(
                "already_quantized",
                field,
                f'"{name}" was saved already quantized ({info.prequantized})',
                "it loads quantized as it is: remove it from the quantization config",
                name,
            )
        ]
    if not info.is_module:
        return [
            Problem(
                "component_not_module",
                field,
                f'"{name}" is a {info.class_name}, not a model: there are no weights to quantize',
                "quantize one of: " + ", ".join(model.module_names),
                name,
            )
        ]
    return []


# -- one backend spec -----------------------------------------------------------------------
def _check_backend_spec(
    spec: BackendSpec,
    dtype: str,
    target: str | None,
    offload: str,
    gguf_roots: list[Path],
    model: ModelInfo | None,
    components: list[str],
) -> list[Problem]:
    backend = catalogue.get_backend(spec.backend)
    if backend is None:
        return [
            Problem(
                "unknown_backend",
                "backend",
                f'unknown backend "{spec.backend}"',
                did_you_mean(spec.backend, catalogue.backend_names()),
            )
        ]
    problems: list[Problem] = []
    if not backend.installed():
        problems.append(
            Problem(
                "backend_not_installed",
                "backend",
                f"{backend.label} is not installed",
                f"install it into ComfyUI's Python: {backend.pip}",
            )
        )
    quant = backend.quant_type(spec.quant_type)
    if quant is None:
        owners = catalogue.all_quant_types().get(spec.quant_type)
        valid = [q.name for q in backend.quant_types]
        if owners:
            problems.append(
                Problem(
                    "quant_type_wrong_backend",
                    "quant_type",
                    f'"{spec.quant_type}" is a quant type of {", ".join(owners)}, not of {backend.name}',
                    f"{backend.name} has: {', '.join(valid)}",
                )
            )
        else:
            problems.append(
                Problem(
                    "unknown_quant_type",
                    "quant_type",
                    f'{backend.name} has no quant type "{spec.quant_type}"',
                    did_you_mean(spec.quant_type, valid),
                )
            )
    problems += _check_compute_dtype(spec, backend, quant, dtype)
    problems += _check_options(spec.options_dict, backend, quant)
    problems += _check_file(spec, backend, gguf_roots, model, components)
    if model is not None:
        for name in components:
            library = model.components[name].library
            if library not in backend.libraries:
                problems.append(
                    Problem(
                        "backend_library",
                        "backend",
                        f'{backend.label} cannot quantize "{name}", a {library} model',
                        f"{backend.name} works on {', '.join(backend.libraries)} models; "
                        f"use {catalogue.one_of(catalogue.quantizers_for(library))} for {name}",
                        name,
                    )
                )
    if target is not None and quant is not None:
        problems += _check_target(backend, quant, target, offload, model, components)
    if model is not None and not problems:
        problems += _check_skip_list(spec.options_dict.get("modules_to_not_convert"), backend, model, components)
    if backend.deprecated:  # a warning, after the checks that run only on an error-free spec
        problems.append(
            Problem(
                "backend_deprecated",
                "backend",
                f"{backend.label} is deprecated",
                backend.deprecated,
                severity="warning",
            )
        )
    return problems


def _check_skip_list(skip, backend: Backend, model: ModelInfo, components: list[str]) -> list[Problem]:
    """Each modules_to_not_convert entry must keep something out, as the backend matches it: a
    typo ("proj_outt") silently quantizes the module (diffusers raises nothing)."""
    if not skip or not isinstance(skip, (list, tuple)):
        return []
    field = "options.modules_to_not_convert"
    problems = []
    for name in components:
        info = model.components[name]
        try:
            modules = meta_modules(info)
        except ValidationError as exc:  # the config cannot be built within bounds
            return exc.problems
        names = [m for m, _ in modules]
        linears = [m for m, n in modules if n is not None]
        for entry in skip:
            if any(backend.skips(info.library, m, entry) for m in linears):
                continue
            if any(entry == m or entry in m.split(".") or m.startswith(entry + ".") for m in names):
                problems.append(
                    Problem(
                        "option_parent_module",
                        field,
                        f'{backend.label} keeps a layer unquantized only when its own name is listed: "{entry}" in '
                        f'"{name}" names a parent module, whose layers would be quantized anyway',
                        "list the layers themselves, e.g. "
                        + ", ".join(
                            f'"{m}"'
                            for m in list(
                                dict.fromkeys(
                                    x.rsplit(".", 1)[-1]
                                    for x in linears
                                    if x.startswith(entry + ".") or f".{entry}." in x
                                )
                            )[:4]
                        ),
                        name,
                    )
                )
                continue
            short = sorted(
                x
                for x in {m.rsplit(".", 1)[-1] for m in linears} | {m.split(".", 1)[0] for m in names}
                if not x.isdigit()
            )
            guess = closest(entry, short)
            problems.append(
                Problem(
                    "option_no_match",
                    field,
                    f'"{entry}" matches no module of "{name}" ({info.class_name}): it would keep nothing unquantized',
                    (f'did you mean "{guess}"? ' if guess else "") + "e.g. " + ", ".join(f'"{m}"' for m in short[:8]),
                    name,
                )
            )
    return problems


def _check_compute_dtype(spec, backend: Backend, quant, dtype) -> list[Problem]:
    if spec.compute_dtype not in COMPUTE_DTYPES:
        return [
            Problem(
                "compute_dtype_unknown",
                "compute_dtype",
                f'unknown compute dtype "{spec.compute_dtype}"',
                did_you_mean(spec.compute_dtype, COMPUTE_DTYPES),
            )
        ]
    effective = dtype if spec.compute_dtype == "auto" else spec.compute_dtype
    if quant is not None and effective not in quant.compute_dtypes:
        source = "compute_dtype" if spec.compute_dtype != "auto" else "the loader's dtype (compute_dtype is auto)"
        return [
            Problem(
                "compute_dtype_unsupported",
                "compute_dtype",
                f"{backend.name} {quant.name} cannot compute in {effective} ({source})",
                f"use {' or '.join(quant.compute_dtypes)}",
            )
        ]
    return []


def _check_options(options: dict, backend: Backend, quant) -> list[Problem]:
    problems = []
    for key, value in options.items():
        option = backend.option(key)
        field = f"options.{key}"
        if option is None:
            # Only what the chosen quant type takes: a backend option it does not take would be
            # the next error ("does not apply").
            valid = list(quant.options) if quant is not None else [o.name for o in backend.options]
            owner = f"{backend.name} {quant.name}" if quant is not None else backend.name
            problems.append(
                Problem(
                    "unknown_option",
                    field,
                    f'{backend.name} has no option "{key}"',
                    did_you_mean(key, valid) if valid else f"{owner} takes no options: use {{}}",
                )
            )
            continue
        if quant is not None and key not in quant.options:
            problems.append(
                Problem(
                    "option_not_applicable",
                    field,
                    f'"{key}" does not apply to {backend.name} {quant.name}',
                    f"{quant.name} takes: {', '.join(quant.options) or 'no options'}",
                )
            )
        problems += _check_value(option, value, field)
    return problems


def _check_value(option: Option, value, field: str) -> list[Problem]:
    def wrong(expected: str) -> list[Problem]:
        return [
            Problem(
                "option_type",
                field,
                f"{option.name} must be {expected}, got {value!r}",
                f"e.g. {option.default!r}" if option.default not in (None, []) else f"e.g. {expected}",
            )
        ]

    if option.type == "bool":
        return [] if isinstance(value, bool) else wrong("true or false")
    if option.type in ("int", "float"):
        ok = isinstance(value, int) if option.type == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            return wrong("an integer" if option.type == "int" else "a number")
        if (option.min is not None and not value >= option.min) or (option.max is not None and not value <= option.max):
            return [
                Problem(
                    "option_range",
                    field,
                    f"{option.name}={value} is out of range",
                    f"use a value from {option.min} to {option.max}",
                )
            ]
        return []
    if option.type == "str_list":
        if not (isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)):
            return wrong('a list of module names, e.g. ["proj_out"]')
        return []
    if option.type == "choice":
        if value not in option.choices:
            return [
                Problem(
                    "option_choice",
                    field,
                    f"{option.name}={value!r} is not one of the choices",
                    did_you_mean(str(value), [str(c) for c in option.choices]),
                )
            ]
    return []


def _check_file(spec, backend: Backend, gguf_roots, model, components) -> list[Problem]:
    field = "gguf_file"
    if not backend.needs_file:
        if spec.gguf_file:
            readers = catalogue.file_backends()
            kinds = catalogue.one_of(list(dict.fromkeys(b.file_kind for b in readers)))
            names = catalogue.one_of([f'"{b.name}"' for b in readers])
            return [
                Problem(
                    "gguf_file_unused",
                    field,
                    f"a {kinds} file is set but the backend is {backend.name}",
                    f"set backend to {names} or clear gguf_file",
                    severity="warning",
                )
            ]
        return []
    if not spec.gguf_file:
        return [
            Problem(
                "gguf_file_required",
                field,
                f"the {backend.name} backend needs a {backend.file_suffix} file",
                "pick one from the diffusion_models or unet folders, or a diffusers model folder",
            )
        ]
    path = find_file(spec.gguf_file, gguf_roots)
    if path is None:
        return [
            Problem(
                "gguf_file_missing",
                field,
                f'no {backend.file_kind} file "{spec.gguf_file}" in {searched(gguf_roots)}',
                did_you_mean(spec.gguf_file, list_files(gguf_roots))
                + " The headless runner searches the folders given with --gguf DIR too.",
            )
        ]
    try:
        summary = backend.read_file(path)
    except ValueError as exc:
        return [Problem(getattr(exc, "code", "gguf_file_unreadable"), field, str(exc), "re-download the file")]
    problems = []
    if model is not None:
        for name in components:
            info = model.components.get(name)
            if info is not None and info.tensors and summary.params != info.params:
                problems.append(
                    Problem(
                        "gguf_mismatch",
                        field,
                        f"{path.name} holds {summary.params:,} parameters in {summary.tensors} tensors; "
                        f'"{name}" ({info.class_name}) has {info.params:,}: the file is for another model',
                        f"pick the {backend.file_kind} made from this pipeline's {name}",
                        name,
                    )
                )
    return problems


def _check_device(device: str, offload: str) -> list[Problem]:
    problems = []
    if not devices.is_known_device(device):
        return [
            Problem("device_unknown", "device", f'unknown device "{device}"', did_you_mean(device, devices.DEVICES))
        ]
    target = devices.resolve_device(device)
    if target.startswith("cuda") and not devices.cuda_device_exists(target):
        problems.append(
            Problem(
                "device_unavailable",
                "device",
                f"{target} is not available on this machine",
                'use "cpu", or "auto" to pick the GPU when there is one',
            )
        )
    if offload not in devices.OFFLOAD_MODES:
        problems.append(
            Problem(
                "offload_unknown",
                "offload",
                f'unknown offload mode "{offload}"',
                did_you_mean(offload, devices.OFFLOAD_MODES),
            )
        )
    elif offload != "none" and target == "cpu":
        problems.append(
            Problem(
                "offload_needs_cuda",
                "offload",
                "CPU offload moves models to a GPU and back: there is none",
                'use offload "none" on CPU',
            )
        )
    return problems


def _check_target(backend, quant, target, offload, model, components) -> list[Problem]:
    problems = []
    on_cpu = target == "cpu"
    if quant.needs_cuda and on_cpu:
        problems.append(
            Problem(
                "needs_cuda",
                "quant_type",
                f"{backend.name} {quant.name} needs a CUDA GPU",
                "pick a quant type that runs on CPU: "
                + ", ".join(q.name for q in backend.quant_types if not q.needs_cuda),
            )
        )
    problems += backend.target_problems(quant.name, target or "")
    cc = devices.compute_capability(target)
    if cc is not None and quant.min_compute_capability and cc < quant.min_compute_capability:
        want = ".".join(map(str, quant.min_compute_capability))
        problems.append(
            Problem(
                "compute_capability",
                "quant_type",
                f"{backend.name} {quant.name} needs compute capability {want}+; this GPU is {cc[0]}.{cc[1]}",
                f"use {catalogue.one_of(_runs_anywhere(backend))}",
            )
        )
    if on_cpu and model is not None:
        for name in components:
            library = model.components[name].library
            if library in backend.libraries and not backend.cpu_supported(library):
                problems.append(
                    Problem(
                        "backend_needs_gpu",
                        "backend",
                        f'{backend.label} needs a GPU to quantize {library} models such as "{name}"',
                        f"use {catalogue.one_of(catalogue.cpu_quantizers_for(library))} on CPU",
                        name,
                    )
                )
    if quant.needs_cuda and offload != "none":
        problems.append(
            Problem(
                "offload_incompatible",
                "offload",
                f"{backend.name} {quant.name} is quantized on the GPU and cannot be offloaded to the CPU",
                f'use offload "none", or {" / ".join(_runs_anywhere(backend))} with offload',
            )
        )
    if offload == "sequential" and not backend.sequential_offload:
        problems.append(
            Problem(
                "offload_incompatible",
                "offload",
                f'sequential CPU offload fails with {backend.family_name} ("{backend.sequential_offload_error}")',
                'use offload "model" instead',
            )
        )
    return problems


def _runs_anywhere(backend: Backend) -> list[str]:
    """The backend's quant types that need neither CUDA nor a recent GPU."""
    return [q.name for q in backend.quant_types if not q.needs_cuda and not q.min_compute_capability]


def _check_pickle(model: ModelInfo) -> list[Problem]:
    problems = []
    for name, info in model.components.items():
        if info.is_module and not info.weight_files:
            if info.pickle_files:
                problems.append(
                    Problem(
                        "pickle_only",
                        "model",
                        f'"{name}" has only pickle weights ({info.pickle_files[0].name}), which can run code when loaded',
                        "convert it to safetensors, or opt in with allow_pickle (only for files you trust)",
                        name,
                    )
                )
            else:
                problems.append(
                    Problem(
                        "weights_missing",
                        "model",
                        f'"{name}" has no weight files in {info.folder}',
                        "re-download the pipeline",
                        name,
                    )
                )
    return problems


def searched(roots) -> str:
    """The folders a file was looked for in, for a message."""
    folders = [str(r) for r in roots or ()]
    if not folders:
        return "any folder: none is configured (diffusion_models, unet)"
    return "the folders searched: " + ", ".join(folders)
