"""Into ComfyUI's own graph: the pipeline's denoiser as a MODEL, its VAE as a VAE (the prompt
encoding lives in resolver/run/encode.py). ComfyUI is imported lazily, inside the builders."""

from .adapters import ADAPTERS, TO_COMFY_NODE
from .comfy_model import LORA_REFUSED, build_model
from .comfy_vae import build_vae

__all__ = ["ADAPTERS", "LORA_REFUSED", "TO_COMFY_NODE", "build_model", "build_vae"]
