"""What travels on a link: the immutable quantization specs, built from widget values and composed."""

from .compose import chain, component_problems
from .inputs import NO_FILE, parse_components, parse_options, spec_from_inputs
from .spec import GLOBAL, GRANULAR, BackendSpec, ComponentMap, spec_from_dict

__all__ = [
    "BackendSpec",
    "ComponentMap",
    "GLOBAL",
    "GRANULAR",
    "NO_FILE",
    "chain",
    "component_problems",
    "parse_components",
    "parse_options",
    "spec_from_dict",
    "spec_from_inputs",
]
