"""What a model folder holds, read without loading a weight: roots, hub cache, headers, variants, configs."""

from . import hub_cache, shape_seed, shape_store
from .inspect_model import inspect_model
from .meta_build import isolate_empty_init
from .roots import (
    GGUF_ENV,
    MODELS_ENV,
    contained,
    env_roots,
    list_files,
    list_pipelines,
    refused_pipelines,
    resolve_model,
)
from .safetensors_header import DTYPE_BYTES
from .variant import DEFAULT, choices

__all__ = [
    "DEFAULT",
    "DTYPE_BYTES",
    "GGUF_ENV",
    "MODELS_ENV",
    "choices",
    "contained",
    "env_roots",
    "hub_cache",
    "inspect_model",
    "isolate_empty_init",
    "list_files",
    "list_pipelines",
    "refused_pipelines",
    "resolve_model",
    "shape_seed",
    "shape_store",
]
