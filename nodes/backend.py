"""Quantization Backend: one backend and its options, for the whole pipeline (global mode)."""

from __future__ import annotations

from ..resolver.constants import COMPUTE_DTYPES
from ..resolver.decide import validate
from ..resolver.files import list_files
from ..resolver.known import backend_tooltip, catalogue
from ..resolver.links import NO_FILE, parse_options, spec_from_inputs
from . import host
from .messages import raise_for, validation_result

CONFIG_TYPE = "PIPELINE_QUANT_CONFIG"


def quant_type_choices() -> list[str]:
    return list(catalogue.all_quant_types())


class PipeQuantBackend:
    TITLE = "Quantization Backend"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Pick one quantization backend and its settings. Connect it to Load Quantized Pipeline to "
        "quantize every model component (or those listed), or to a Per-Component Map for one component."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (CONFIG_TYPE,)
    RETURN_NAMES = ("quant_config",)
    OUTPUT_TOOLTIPS = ("A quantization config (global mode) for Load Quantized Pipeline or Per-Component Map.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        backends = catalogue.backend_names()
        # A new node starts with what runs on this server (no bitsandbytes on a CPU-only one).
        default_backend, default_quant = catalogue.default_choice(host.default_device())
        return {
            "required": {
                "backend": (backends, {"default": default_backend, "tooltip": backend_tooltip()}),
                "quant_type": (
                    quant_type_choices(),
                    {
                        "default": default_quant,
                        "tooltip": "The backend's quantization type; the list narrows to "
                        "the chosen backend in the editor.",
                    },
                ),
                "compute_dtype": (
                    list(COMPUTE_DTYPES),
                    {"default": "auto", "tooltip": "dtype the quantized layers compute in; auto = the loader's dtype."},
                ),
                "components": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Comma-separated components to quantize, e.g. "
                        '"transformer, text_encoder_2". Empty = every model '
                        "component the backend supports.",
                    },
                ),
                "options": (
                    "STRING",
                    {
                        "default": "{}",
                        "multiline": True,
                        "tooltip": 'Extra backend options as a JSON object, e.g. {"double_quant": true} '
                        'or {"modules_to_not_convert": ["proj_out"]}.',
                    },
                ),
            },
            "optional": {
                "gguf_file": (
                    [NO_FILE] + list_files(host.gguf_roots()),
                    {
                        "default": NO_FILE,
                        "tooltip": "For backend gguf: the .gguf file holding one diffusers model's "
                        "weights (the transformer or UNet), from models/diffusion_models, "
                        "models/unet or a diffusers model folder.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, options):
        """ComfyUI files a failure here once per argument this takes, so it takes one input and
        checks what that input decides alone (options must be a JSON object); the rest is checked
        first thing when the node runs (`check`), long before a weight is read, and live in the editor."""
        return validation_result(parse_options(options)[1], PipeQuantBackend.TITLE)

    @classmethod
    def check(cls, backend, quant_type, compute_dtype, components, options, gguf_file=NO_FILE):
        """Every input together: True, or the text naming the node and each input at fault."""
        spec, problems = spec_from_inputs(backend, quant_type, compute_dtype, components, options, gguf_file)
        if spec is not None:
            problems = validate(spec, gguf_roots=host.gguf_roots(), may_feed_map=True)
        return validation_result(problems, PipeQuantBackend.TITLE)

    def build(self, backend, quant_type, compute_dtype, components, options, gguf_file=NO_FILE):
        spec, problems = spec_from_inputs(backend, quant_type, compute_dtype, components, options, gguf_file)
        if spec is not None:
            problems = validate(spec, gguf_roots=host.gguf_roots(), may_feed_map=True)
        raise_for(problems, PipeQuantBackend.TITLE)
        return (spec,)
