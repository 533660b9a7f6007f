"""What happens to loaded modules: the runtime context, blocks and Cancel, compile, LoRA, sampling."""

from . import lora
from .context import diffusers_context
from .lora import ENV_VAR, STRENGTH_RANGE, activate, list_loras, load_adapter, make_spec, resolve_lora
from .sample import generate

__all__ = [
    "ENV_VAR",
    "STRENGTH_RANGE",
    "activate",
    "diffusers_context",
    "generate",
    "list_loras",
    "load_adapter",
    "lora",
    "make_spec",
    "resolve_lora",
]
