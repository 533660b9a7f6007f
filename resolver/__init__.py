"""PipeQuant's resolver: catalogue, specs, inspection, validation, planning, loading, reporting.

Importable without ComfyUI; the nodes, the HTTP routes and the command line are thin layers over it.
"""

from .decide.plan import make_plan
from .decide.validate import validate
from .files.inspect_model import inspect_model
from .keep.cache import COMPONENT_CACHE, ComponentCache
from .keep.load import LoadError, LoadResult, load, plan_load
from .known.catalogue import backend_names, get_backend
from .known.catalogue import describe as describe_catalogue
from .links.spec import BackendSpec, ComponentMap, spec_from_dict, spec_from_json
from .problems import Problem, ValidationError
from .run.context import diffusers_context

__all__ = [
    "COMPONENT_CACHE",
    "ComponentCache",
    "backend_names",
    "describe_catalogue",
    "get_backend",
    "inspect_model",
    "LoadError",
    "LoadResult",
    "diffusers_context",
    "load",
    "plan_load",
    "make_plan",
    "Problem",
    "ValidationError",
    "BackendSpec",
    "ComponentMap",
    "spec_from_dict",
    "spec_from_json",
    "validate",
]
