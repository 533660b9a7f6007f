"""What exists: the backends and their options, the libraries' classes, measured figures, the machine."""

from . import catalogue, measured
from .catalogue import DIFFUSERS, get_backend
from .catalogue_text import backend_tooltip, save_summary
from .devices import DEVICES, OFFLOAD_MODES, resolve_device
from .measured import DATA_FILE

__all__ = [
    "DATA_FILE",
    "DEVICES",
    "DIFFUSERS",
    "OFFLOAD_MODES",
    "backend_tooltip",
    "catalogue",
    "get_backend",
    "measured",
    "resolve_device",
    "save_summary",
]
