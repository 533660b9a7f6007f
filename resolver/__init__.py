"""PipeQuant's resolver: catalogue, specs, inspection, validation, planning, loading, reporting.

Importable without ComfyUI; the nodes, the HTTP routes and the command line are thin layers over it.
"""
from .cache import COMPONENT_CACHE, ComponentCache
from .catalogue import backend_names, get_backend
from .catalogue import describe as describe_catalogue
from .inspect_model import inspect_model
from .load import LoadError, LoadResult, diffusers_context, load, plan_load
from .plan import make_plan
from .problems import Problem, ValidationError
from .spec import BackendSpec, ComponentMap, spec_from_dict, spec_from_json
from .validate import validate

__all__ = [
    "COMPONENT_CACHE", "ComponentCache", "backend_names", "describe_catalogue", "get_backend", "inspect_model",
    "LoadError", "LoadResult", "diffusers_context", "load", "plan_load", "make_plan", "Problem", "ValidationError",
    "BackendSpec", "ComponentMap", "spec_from_dict", "spec_from_json", "validate",
]
