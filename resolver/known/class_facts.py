"""What diffusers and transformers declare about their classes, known without importing them.

Validation needs a few facts per class: which pipelines exist and the components each declares,
what a class is for (model, scheduler, tokenizer, processor), a model's base classes and its config
fields' defaults, which quantization methods a library maps and the arguments of their configs. Importing diffusers to learn them
costs about 8 s of a 10 s `python -m pipequant validate`. So the facts for the library versions the
pack is tested with are generated into data/class_facts.json (`python -m pipequant.resolver.known.class_facts`),
and read when the installed versions match; otherwise, or for a class the file lacks, they come
from the live classes by the same functions that generate the file.
"""

from __future__ import annotations

import enum
import importlib.metadata
import importlib.util
import inspect
import json
import typing
from functools import lru_cache
from pathlib import Path

from ..constants import DIFFUSERS, TRANSFORMERS

LIBRARIES = (DIFFUSERS, TRANSFORMERS)
FACTS_FILE = Path(__file__).parents[1] / "data" / "class_facts.json"
ANY_SCHEDULER = "<any scheduler>"  # a slot typed with diffusers' KarrasDiffusionSchedulers enum
ANY_CLASS = "typing.Any"  # a slot typed `Any`: diffusers checks nothing
#: transformers' Auto classes a pipeline may type a slot with, and the roles of what each one loads
#: (AutoProcessor falls back to a tokenizer when a folder has no processor).
AUTO_ROLES = {
    "AutoTokenizer": ("tokenizer",),
    "AutoProcessor": ("processor", "tokenizer"),
    "AutoImageProcessor": ("processor",),
    "AutoFeatureExtractor": ("processor",),
    "AutoVideoProcessor": ("processor",),
}
#: roles whose slot any class of the same role may fill (diffusers loads the class model_index.json
#: names and only warns on a type mismatch): schedulers, tokenizers, processors and guiders are
#: swapped freely; a model must be the declared class or a subclass.
SWAPPABLE_ROLES = ("scheduler", "tokenizer", "processor", "guider")


def slot_roles(declared: str, declared_role: str | None) -> tuple[str, ...]:
    """The roles of the classes that may fill a slot typed with `declared` ("transformers.AutoTokenizer")."""
    library, _, name = declared.partition(".")
    if library == TRANSFORMERS and name in AUTO_ROLES:
        return AUTO_ROLES[name]
    return (declared_role,) if declared_role in SWAPPABLE_ROLES else ()


# -- the live classes (imports diffusers / transformers) -------------------------------------------
def load_class(library: str | None, class_name: str | None):
    """The class named in model_index.json, from diffusers or transformers only (never custom code)."""
    if library not in LIBRARIES or not isinstance(class_name, str) or not class_name.isidentifier():
        return None
    module = __import__(library)
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) else None  # a function or submodule is not a class to load


def qualified(cls) -> str:
    """ "diffusers.AutoencoderKL": the library a class comes from and its name."""
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def role_of(cls) -> str | None:
    """What a class is for in a pipeline: pipeline, model, scheduler, tokenizer, processor or guider
    (an Auto class: the first role of what it loads)."""
    import diffusers
    import torch
    import transformers

    if not isinstance(cls, type):
        return None
    if cls.__module__.startswith("transformers.models.auto.") and cls.__name__ in AUTO_ROLES:
        return AUTO_ROLES[cls.__name__][0]
    for role, bases in (
        ("pipeline", (diffusers.DiffusionPipeline,)),
        ("model", (torch.nn.Module,)),
        ("scheduler", (diffusers.SchedulerMixin,)),
        ("tokenizer", (transformers.PreTrainedTokenizerBase,)),
        (
            "processor",
            (transformers.ImageProcessingMixin, transformers.FeatureExtractionMixin, transformers.ProcessorMixin),
        ),
        ("guider", (diffusers.BaseGuidance,)),
    ):
        if issubclass(cls, bases):
            return role
    return None


def config_defaults(cls, library: str) -> dict:
    """The config fields a model class declares, with their default values (JSON-able ones only:
    the config check compares a field's JSON type with its default's)."""
    if library == DIFFUSERS:
        params = inspect.signature(cls.__init__).parameters
        found = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    else:
        try:
            found = dict(vars(cls.config_class()))
        except Exception:  # a config class that needs arguments: no defaults to compare with
            found = {}
    out = {}
    for name, value in found.items():
        try:
            out[name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return out


def _annotation_classes(annotation) -> list:
    """The classes an __init__ annotation allows (Optional/Union unpacked; enums of schedulers kept)."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return []
    args = typing.get_args(annotation)
    if args:
        return [t for a in args if a is not type(None) for t in _annotation_classes(a)]
    return [annotation]


def _type_hints(function) -> dict:
    """A function's annotations with strings resolved (`from __future__ import annotations` makes
    every annotation a string), as diffusers' own `_get_signature_types` resolves them; one that
    cannot be resolved stays a string (an untyped slot)."""
    try:
        return typing.get_type_hints(function)
    except Exception:
        pass
    namespace = getattr(function, "__globals__", {})
    out = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        try:
            out[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
        except Exception:
            out[name] = annotation
    return out


def _slot(cls) -> list:
    """One class a pipeline declares for a component: [qualified name, its role]."""
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return [ANY_SCHEDULER, "scheduler"]
    return [qualified(cls), role_of(cls)] if isinstance(cls, type) else [repr(cls)[:80], None]


def live_pipeline(class_name: str) -> dict | None:
    """{component: [[qualified class, role], ...]} a diffusers pipeline's __init__ declares ([] = not
    typed); None when `class_name` is not a pipeline built into diffusers."""
    import diffusers

    cls = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        return None
    params = inspect.signature(cls.__init__).parameters
    hints = _type_hints(cls.__init__)
    out = {
        n: [_slot(t) for t in _annotation_classes(hints.get(n, p.annotation))]
        for n, p in params.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for name in getattr(cls, "_optional_components", []) or []:
        out.setdefault(name, [])
    return out


#: the `__call__` arguments of a pipeline that say what it renders: frames (a video) and their rate.
CALL_FACTS = ("num_frames", "frame_rate", "fps")


def live_call(class_name: str) -> dict | None:
    """{argument: default} of the CALL_FACTS a diffusers pipeline's __call__ takes ({} for an image
    pipeline); None when `class_name` is not a pipeline built into diffusers."""
    import diffusers

    cls = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        return None
    params = inspect.signature(cls.__call__).parameters
    out = {}
    for name in CALL_FACTS:
        if name in params:
            default = params[name].default
            out[name] = default if isinstance(default, (int, float)) and not isinstance(default, bool) else None
    return out


def live_class(library: str, class_name: str) -> dict | None:
    """{"role", "bases", "defaults"} of a class of `library` (bases and config defaults for models
    only); None when it has no such class."""
    cls = load_class(library, class_name)
    if cls is None:
        return None
    role = role_of(cls)
    if role != "model":  # only a model's slot is checked by class (any tokenizer may fill a tokenizer's)
        return {"role": role, "bases": [], "defaults": {}}
    return {"role": role, "bases": [qualified(c) for c in cls.__mro__], "defaults": config_defaults(cls, library)}


def live_config_classes(library: str) -> dict:
    """quant_method -> config class, as the library's own AUTO mapping declares it ({} if the
    library is not installed). The one place that imports those mappings."""
    try:
        if library == DIFFUSERS:
            from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING
        elif library == TRANSFORMERS:
            from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING
        else:
            return {}
    except ImportError:
        return {}
    return dict(AUTO_QUANTIZATION_CONFIG_MAPPING)


def live_own_config_classes(library: str) -> dict:
    """live_config_classes less what other packages registered at import (SDNQ adds itself to
    transformers' mapping when imported): the generated file must not depend on import order."""
    return {
        method: cls
        for method, cls in live_config_classes(library).items()
        if cls.__module__.split(".", 1)[0] == library
    }


def live_quantization_methods(library: str) -> list[str]:
    """The quant_method names the library itself maps to a config class ([] if it is not installed)."""
    return list(live_own_config_classes(library))


def live_config_parameters(library: str) -> dict[str, list[str]]:
    """quant_method -> the arguments its config class takes (global specs compare them)."""
    return {
        method: sorted(set(inspect.signature(cls.__init__).parameters) - {"self"})
        for method, cls in live_own_config_classes(library).items()
    }


@lru_cache(maxsize=1)
def _distributions_by_module() -> dict:
    """Top-level module -> the distributions installing it. Scanning every installed package's
    metadata is slow (seconds, megabytes read with many packages): once per process."""
    return importlib.metadata.packages_distributions()


@lru_cache(maxsize=None)
def distribution_versions(module: str) -> str:
    """ "dist=version" of each installed distribution that provides `module` (optimum.quanto ->
    "optimum-quanto=0.2.7"), read from package metadata without importing it; "" when none.
    The distribution named like the module (torch, sdnq, optimum-quanto) is asked first, and a
    module that is not installed at all answers "" at once: only the rest costs the scan of every
    package (0.2-1 s of CPU per process here, paid by every cold load through the estimate and the
    disk cache key)."""
    root = module.split(".")[0]
    if importlib.util.find_spec(root) is None:
        return ""
    for name in dict.fromkeys((module.replace(".", "-"), root)):
        try:
            return f"{importlib.metadata.distribution(name).metadata['Name']}={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    dists = _distributions_by_module().get(module.split(".")[0], [])
    return ",".join(sorted(f"{d}={importlib.metadata.version(d)}" for d in set(dists)))


# -- the generated file ----------------------------------------------------------------------------
def installed_versions() -> dict[str, str | None]:
    out = {}
    for library in LIBRARIES:
        try:
            out[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            out[library] = None
    return out


@lru_cache(maxsize=1)
def _table() -> dict:
    """The generated facts when they were made for the installed versions, else {}."""
    try:
        table = json.loads(FACTS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return table if table.get("versions") == installed_versions() else {}


def _from_table(kind: str, key: str, live):
    table = _table()
    if key in table.get(kind, {}):
        return table[kind][key]
    return live()


@lru_cache(maxsize=None)
def _pipeline(class_name: str):
    return _from_table("pipelines", class_name, lambda: live_pipeline(class_name))


@lru_cache(maxsize=None)
def _call(class_name: str):
    return _from_table("calls", class_name, lambda: live_call(class_name))


def pipeline_call(class_name: str) -> dict:
    """See live_call ({} for an unknown class); from the generated file where it can."""
    if not isinstance(class_name, str) or not class_name.isidentifier():
        return {}
    return _call(class_name) or {}


def pipeline_components(class_name: str) -> dict | None:
    """See live_pipeline; from the generated file where it can."""
    if not isinstance(class_name, str) or not class_name.isidentifier():
        return None
    return _pipeline(class_name)


@lru_cache(maxsize=None)
def _class(library: str, class_name: str):
    return _from_table("classes", f"{library}.{class_name}", lambda: live_class(library, class_name))


def class_info(library: str | None, class_name: str | None) -> dict | None:
    """See live_class; from the generated file where it can."""
    if library not in LIBRARIES or not isinstance(class_name, str) or not class_name.isidentifier():
        return None
    return _class(library, class_name)


@lru_cache(maxsize=None)
def quantization_methods(library: str) -> tuple[str, ...]:
    """See live_quantization_methods; from the generated file where it can. A package that registers
    its method only when imported (SDNQ with transformers) is the caller's to check."""
    if library not in LIBRARIES:
        return ()
    return tuple(_from_table("quantization", library, lambda: live_quantization_methods(library)))


def _transformers_part_names() -> set[str]:
    """The tokenizer and image processor names transformers' auto classes know: what a
    model_index.json names for those parts (an alias such as T5TokenizerFast included)."""
    from transformers.models.auto import image_processing_auto, tokenization_auto

    names = set()
    for value in [
        *tokenization_auto.TOKENIZER_MAPPING_NAMES.values(),
        *image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES.values(),
    ]:
        found = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for name in filter(None, found):
            names.update((name, name + "Fast") if name.endswith("Tokenizer") else (name,))
    return names


@lru_cache(maxsize=None)
def config_parameters(library: str, method: str) -> frozenset[str] | None:
    """See live_config_parameters; None when the library has no such method."""
    if library not in LIBRARIES:
        return None
    found = _from_table("config_parameters", library, lambda: live_config_parameters(library)).get(method)
    return None if found is None else frozenset(found)


def generate() -> dict:
    """Every pipeline diffusers exports, every class they declare or diffusers exports, and the
    quantization methods: what `validate` needs for the installed versions."""
    import diffusers

    pipelines, calls, wanted = {}, {}, set()
    for name in sorted(diffusers.__all__):
        try:
            found = live_pipeline(name)
        except Exception:  # an export whose optional dependency is missing
            continue
        if found is None:
            continue
        pipelines[name] = found
        calls[name] = live_call(name)
        wanted.update(q for slots in found.values() for q, _ in slots if q.split(".")[0] in LIBRARIES)
    for name in diffusers.__all__:
        try:
            obj = getattr(diffusers, name)
        except Exception:
            continue
        if isinstance(obj, type) and role_of(obj) in ("model", "scheduler", "guider"):
            wanted.add(qualified(obj))
    wanted.update(f"{TRANSFORMERS}.{name}" for name in _transformers_part_names())
    classes = {}
    for key in sorted(wanted):
        library, name = key.split(".", 1)
        info = live_class(library, name)
        if info is not None:
            classes[key] = info
    return {
        "versions": installed_versions(),
        "pipelines": pipelines,
        "calls": calls,
        "classes": classes,
        "quantization": {lib: live_quantization_methods(lib) for lib in LIBRARIES},
        "config_parameters": {lib: live_config_parameters(lib) for lib in LIBRARIES},
    }


if __name__ == "__main__":
    FACTS_FILE.write_text(json.dumps(generate(), indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {FACTS_FILE}")


@lru_cache(maxsize=None)
def config_mapping(library: str) -> dict:
    """Backend name -> config class, as the library itself declares it ({} if not installed)."""
    return live_config_classes(library)
