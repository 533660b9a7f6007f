"""What happens to loaded modules: the runtime context, blocks and Cancel, compile, LoRA, sampling."""

from . import lora
from .compile import compile_component
from .context import diffusers_context
from .encode import denoiser_of, encode_prompt, families_text, family_of, model_family
from .lora import (
    ENV_VAR,
    EXPERTS,
    STRENGTH_RANGE,
    activate,
    list_loras,
    load_adapter,
    make_spec,
    placement,
    resolve_lora,
)
from .sample import generate

__all__ = [
    "ENV_VAR",
    "EXPERTS",
    "STRENGTH_RANGE",
    "activate",
    "compile_component",
    "denoiser_of",
    "diffusers_context",
    "encode_prompt",
    "families_text",
    "family_of",
    "model_family",
    "generate",
    "list_loras",
    "load_adapter",
    "lora",
    "make_spec",
    "placement",
    "resolve_lora",
]
