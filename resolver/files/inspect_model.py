"""Inspect a pipeline folder from its model_index.json and config files, reading no weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..known.class_facts import ANY_CLASS, ANY_SCHEDULER, class_info, load_class, pipeline_components, slot_roles
from ..problems import Problem, ValidationError
from ..safe_files import FileProblem, read_json_object
from .meta_build import BuildRefused, build_on_meta, check_config
from .roots import INDEX, Root, walk_pipeline
from .safetensors_header import HeaderError, TensorInfo, read_header
from .variant import normalize as normalize_variant
from .variant import variant_of

WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    library: str | None
    class_name: str | None
    is_module: bool
    folder: Path
    weight_files: tuple[Path, ...] = ()
    pickle_files: tuple[Path, ...] = ()
    tensors: tuple[TensorInfo, ...] = ()
    prequantized: str | None = None  # quant_method of a component saved already quantized
    config: tuple = ()  # the model's config.json, frozen (items); () for tokenizers and schedulers
    all_weight_files: tuple[Path, ...] = ()  # every safetensors file, whatever its variant

    @property
    def variant(self) -> str | None:
        """The variant of the weight files this component will load (None: the plain ones)."""
        return variant_of(self.weight_files[0].name) if self.weight_files else None

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
        return out

    @property
    def disk_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def model_class(self):
        return load_class(self.library, self.class_name)

    @property
    def config_dict(self) -> dict:
        return thaw(self.config)

    def with_config(self, config: dict) -> ComponentInfo:
        """The same component with another config.json (what another copy of the model would hold)."""
        return dataclasses.replace(self, config=_freeze(config))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "library": self.library,
            "class": self.class_name,
            "is_module": self.is_module,
            "params": self.params,
            "bytes": self.disk_bytes,
            "bytes_by_dtype": self.bytes_by_dtype,
            "prequantized": self.prequantized,
        }


@dataclass(frozen=True)
class ModelInfo:
    folder: Path
    pipeline_class: str
    components: dict[str, ComponentInfo] = field(default_factory=dict)
    mtime_key: tuple = ()
    variant: str | None = None  # the weight variant asked for ("fp16"); None: the plain files

    @property
    def module_names(self) -> list[str]:
        return [n for n, c in self.components.items() if c.is_module]

    def describe(self) -> dict:
        return {"pipeline_class": self.pipeline_class, "components": [c.describe() for c in self.components.values()]}


def _problem(code: str, message: str, suggestion: str, component: str | None = None) -> ValidationError:
    return ValidationError([Problem(code, "model", message, suggestion, component)])


def _file_problem(exc: FileProblem, folder: Path, component: str | None = None) -> ValidationError:
    try:
        where = exc.path.relative_to(folder).as_posix()
    except ValueError:
        where = exc.path.name
    message = str(exc) if where in str(exc) else f"{where}: {exc}"
    return _problem(exc.code, message, exc.suggestion or "re-download the pipeline", component)


def _freeze(value):
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("__list__", tuple(_freeze(v) for v in value))
    return value


def thaw(value):
    """A frozen config (the tuples above) as JSON data again."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__list__":
        return [thaw(v) for v in value[1]]
    if isinstance(value, tuple):
        return {k: thaw(v) for k, v in value}
    return value


def _weight_files(folder: Path, present: set[str], variant: str | None = None) -> tuple[list[Path], list[Path]]:
    files = [folder / n for n in sorted(present)]
    safetensors = [
        p for p in files if p.suffix == ".safetensors" and p.name.split(".")[0].split("-")[0] in WEIGHT_STEMS
    ]
    # The variant's files when asked for one and the component has them; else the plain files
    # (model.safetensors) over variants (model.fp16.safetensors) when both are there.
    chosen = [p for p in safetensors if variant_of(p.name) == variant] if variant else []
    plain = [p for p in safetensors if p.name.count(".") == 1]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    return chosen or plain or safetensors, pickles


# -- which classes a pipeline may hold ---------------------------------------------------------------
def _fits(info: dict, slots: list) -> bool:
    """Whether a class (its facts) may fill a slot the pipeline declares as `slots`. A model must be
    the declared class or a subclass; any scheduler may replace a scheduler (diffusers swaps them),
    any tokenizer a tokenizer, any processor a processor, any guider a guider; a slot typed with a
    transformers Auto class takes what that class loads (AutoTokenizer: any tokenizer)."""
    role = info["role"]
    if role in (None, "pipeline"):
        return False
    if not slots:
        return True
    for want, want_role in slots:
        if want == ANY_CLASS:
            return True
        if want == ANY_SCHEDULER:
            if role == "scheduler":
                return True
        elif role == "model" and want in info["bases"]:
            return True
        elif role != "model" and role in slot_roles(want, want_role):
            return True
    return False


def _check_entry(pipeline_class: str, declared: dict, name: str, library, class_name) -> dict:
    if not name.isidentifier() or not name.isascii():
        raise _problem(
            "component_name_invalid",
            f"model_index.json names a component {ascii(name)[:80]}: component names are identifiers, never paths",
            'fix model_index.json (e.g. "transformer")',
        )
    info = class_info(library, class_name)
    if info is None:
        raise _problem(
            "unsafe_class",
            f'component "{name}" is {library}.{class_name}: not a diffusers or transformers class',
            "PipeQuant loads only classes built into diffusers/transformers, never custom or remote code",
            name,
        )
    if info["role"] == "pipeline":
        raise _problem(
            "component_is_pipeline",
            f'component "{name}" is a whole pipeline ({class_name}), not a part of {pipeline_class}',
            "a pipeline's components are models, tokenizers and schedulers: fix model_index.json",
            name,
        )
    if name not in declared:
        raise _problem(
            "component_undeclared",
            f'{pipeline_class} has no component "{name}" (model_index.json names it)',
            "remove it from model_index.json; " + pipeline_class + " takes: " + ", ".join(declared),
            name,
        )
    if not _fits(info, declared[name]):
        want = " or ".join(q.split(".", 1)[-1] for q, _ in declared[name])
        raise _problem(
            "component_class_mismatch",
            f'component "{name}" is {class_name}, but {pipeline_class} declares {want} for it',
            "fix model_index.json, or re-download the pipeline",
            name,
        )
    return info


# -- the folder ------------------------------------------------------------------------------------
def inspect_model(folder: Path, root: Root | None = None, variant: str | None = None) -> ModelInfo:
    """Every file of the pipeline folder is checked (links stay inside it, or inside what `root`
    vouches for; only regular files) before anything in it is read. `variant` ("fp16"): read that
    variant's weight files where a component has them."""
    folder = Path(folder)
    try:
        stats = tuple((rel, st.st_mtime_ns, st.st_size) for rel, st in walk_pipeline(folder, root))
    except FileProblem as exc:
        raise _file_problem(exc, folder) from None
    return _inspect_cached(folder.resolve(), stats, normalize_variant(variant))


def _read_json(path: Path, folder: Path, component: str | None = None) -> dict:
    try:
        return read_json_object(path)
    except FileProblem as exc:
        raise _file_problem(exc, folder, component) from None


@lru_cache(maxsize=32)
def _inspect_cached(folder: Path, mtime_key: tuple, variant: str | None = None) -> ModelInfo:
    present = {rel for rel, _, _ in mtime_key}
    try:
        index = read_json_object(folder / INDEX)
    except FileProblem as exc:
        if exc.code in ("json_invalid", "json_not_object"):
            raise _problem(
                "model_index_broken",
                f"{folder / INDEX} cannot be read: {exc}",
                "re-download the pipeline or fix model_index.json",
            ) from None
        raise _file_problem(exc, folder) from None
    pipeline_class = index.get("_class_name")
    declared = pipeline_components(pipeline_class)
    if declared is None:
        raise _problem(
            "unsafe_class",
            f'model_index.json names pipeline class "{pipeline_class!s:.80}", which is not a '
            "pipeline built into diffusers",
            "only pipelines built into diffusers load; custom pipeline code is never run",
        )
    components: dict[str, ComponentInfo] = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(entry, list):
            continue  # a pipeline setting such as "requires_safety_checker": false
        if len(entry) != 2 or not all(v is None or isinstance(v, str) for v in entry):
            raise _problem(
                "model_index_broken",
                f"model_index.json entry {ascii(name)[:80]} is {entry!r:.80}, not [library, class]",
                "fix model_index.json",
                name,
            )
        library, class_name = entry
        if library is None and class_name is None:
            continue  # an optional component the pipeline does not have
        info = _check_entry(pipeline_class, declared, name, library, class_name)
        components[name] = _component(folder, name, library, class_name, info, present, variant)
    return ModelInfo(folder, pipeline_class, components, mtime_key, variant)


def _component(
    folder: Path, name: str, library: str, class_name: str, info: dict, present: set[str], variant: str | None = None
) -> ComponentInfo:
    sub = folder / name
    if info["role"] != "model":
        return ComponentInfo(name, library, class_name, False, sub)
    mine = {rel[len(name) + 1 :] for rel in present if rel.startswith(name + "/") and "/" not in rel[len(name) + 1 :]}
    files, pickles = _weight_files(sub, mine, variant)
    every = tuple(sub / n for n in sorted(mine) if n.endswith(".safetensors"))
    tensors = []
    for f in files:
        try:
            tensors.extend(read_header(f))
        except HeaderError as exc:
            raise _problem(
                exc.code, f'component "{name}": {exc} ({f})', "re-download or re-save that file", name
            ) from None
    config = _read_json(sub / "config.json", folder, name) if "config.json" in mine else {}
    try:  # field types and layer counts, before anything builds from it
        check_config(config, info["defaults"], f"{name}/config.json")
    except BuildRefused as exc:
        raise _problem(exc.code, str(exc), exc.suggestion, name) from None
    method = config.get("quantization_config")
    method = method.get("quant_method") if isinstance(method, dict) else None
    return ComponentInfo(
        name,
        library,
        class_name,
        True,
        sub,
        tuple(files),
        tuple(pickles),
        tuple(tensors),
        str(method) if method else None,
        _freeze(config),
        every,
    )


@lru_cache(maxsize=64)
def meta_modules(component: ComponentInfo) -> tuple[tuple[str, int | None], ...]:
    """(module name, weight numel if it is an nn.Linear else None) of every module, from a
    meta-device instance: no weights read. The build is bounded (files/meta_build.py): an
    absurd config is a ValidationError."""
    import torch

    where = f"{component.name}/config.json"
    try:
        model = build_on_meta(component.model_class(), component.library, component.config_dict, where)
    except BuildRefused as exc:
        raise _problem(exc.code, str(exc), exc.suggestion, component.name) from None
    return tuple(
        (name, m.weight.numel() if isinstance(m, torch.nn.Linear) else None)
        for name, m in model.named_modules()
        if name
    )
