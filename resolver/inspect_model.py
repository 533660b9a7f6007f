"""Inspect a pipeline folder from its model_index.json and config files, reading no weights."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .catalogue import DIFFUSERS, TRANSFORMERS
from .problems import Problem, ValidationError
from .safetensors_header import HeaderError, TensorInfo, read_header

LIBRARIES = (DIFFUSERS, TRANSFORMERS)
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

    def describe(self) -> dict:
        return {"name": self.name, "library": self.library, "class": self.class_name, "is_module": self.is_module,
                "params": self.params, "bytes": self.disk_bytes, "bytes_by_dtype": self.bytes_by_dtype,
                "prequantized": self.prequantized}


@dataclass(frozen=True)
class ModelInfo:
    folder: Path
    pipeline_class: str
    components: dict[str, ComponentInfo] = field(default_factory=dict)
    mtime_key: tuple = ()

    @property
    def module_names(self) -> list[str]:
        return [n for n, c in self.components.items() if c.is_module]

    def describe(self) -> dict:
        return {"pipeline_class": self.pipeline_class,
                "components": [c.describe() for c in self.components.values()]}


def load_class(library: str | None, class_name: str | None):
    """The class named in model_index.json, from diffusers or transformers only (never custom code)."""
    if library not in LIBRARIES or not class_name or not class_name.isidentifier():
        return None
    module = __import__(library)
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) else None  # a function or submodule is not a class to load


def _problem(code: str, message: str, suggestion: str, component: str | None = None) -> ValidationError:
    return ValidationError([Problem(code, "model", message, suggestion, component)])


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []
    safetensors = [p for p in files if p.suffix == ".safetensors" and p.name.split(".")[0].split("-")[0] in WEIGHT_STEMS]
    # Prefer the plain files over variants (model.fp16.safetensors) when both are there.
    plain = [p for p in safetensors if p.name.count(".") == 1]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    return plain or safetensors, pickles


def _prequantized(folder: Path) -> str | None:
    """The quant_method recorded in config.json by save_pretrained of a quantized model."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    method = (config.get("quantization_config") or {}).get("quant_method") if isinstance(config, dict) else None
    return str(method) if method else None


def _mtime_key(folder: Path) -> tuple:
    """Changes whenever a file of the pipeline changes (the component cache keys on it)."""
    stats = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            stats.append((p.relative_to(folder).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(stats)


def inspect_model(folder: Path) -> ModelInfo:
    folder = Path(folder)
    return _inspect_cached(folder.resolve(), _mtime_key(folder))


@lru_cache(maxsize=32)
def _inspect_cached(folder: Path, mtime_key: tuple) -> ModelInfo:
    import torch

    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise _problem("model_index_broken", f"{index_path} cannot be read: {exc}",
                       "re-download the pipeline or fix model_index.json") from None
    pipeline_class = index.get("_class_name")
    import diffusers

    pipeline_cls = getattr(diffusers, pipeline_class, None) if isinstance(pipeline_class, str) and \
        pipeline_class.isidentifier() else None
    if not (isinstance(pipeline_cls, type) and issubclass(pipeline_cls, diffusers.DiffusionPipeline)):
        raise _problem("unsafe_class", f'model_index.json names pipeline class "{pipeline_class}", which is not a pipeline built into diffusers',
                       "only pipelines built into diffusers load; custom pipeline code is never run")
    components: dict[str, ComponentInfo] = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(entry, list):
            continue  # a pipeline setting such as "requires_safety_checker": false
        if len(entry) != 2 or not all(v is None or isinstance(v, str) for v in entry):
            raise _problem("model_index_broken", f'model_index.json entry "{name}" is {entry!r}, not [library, class]',
                           "fix model_index.json", name)
        library, class_name = entry
        if library is None and class_name is None:
            continue  # an optional component the pipeline does not have
        cls = load_class(library, class_name)
        if cls is None:
            raise _problem("unsafe_class",
                           f'component "{name}" is {library}.{class_name}: not a diffusers or transformers class',
                           "PipeQuant loads only classes built into diffusers/transformers, never custom or remote code",
                           name)
        sub = folder / name
        is_module = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
        files, pickles, tensors = [], [], []
        if is_module:
            files, pickles = _weight_files(sub)
            for f in files:
                try:
                    tensors.extend(read_header(f))
                except HeaderError as exc:
                    raise _problem("weights_unreadable", f'component "{name}": {exc} ({f})',
                                   "re-download or re-save that file", name) from None
        components[name] = ComponentInfo(name, library, class_name, is_module, sub, tuple(files), tuple(pickles),
                                         tuple(tensors), _prequantized(sub) if is_module else None)
    return ModelInfo(folder, pipeline_class, components, mtime_key)


@lru_cache(maxsize=64)
def linear_layers(component: ComponentInfo) -> tuple[tuple[str, int], ...]:
    """(module name, weight numel) of every nn.Linear, from a meta-device instance: no weights read."""
    import torch

    cls = component.model_class()
    with torch.device("meta"):
        if component.library == DIFFUSERS:
            model = cls.from_config(cls.load_config(component.folder))
        else:
            import transformers

            config = transformers.AutoConfig.from_pretrained(component.folder)
            model = cls(config)
    return tuple((name, m.weight.numel()) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
