"""Save Quantized Pipeline: write a pre-quantized copy into the first diffusers model folder."""
from __future__ import annotations

from ..resolver.problems import ValidationError
from ..resolver.save import save
from . import comfy
from .load import PIPELINE_TYPE
from .messages import NodeInputError, describe

SAVE_NODE = "Save Quantized Pipeline"


class PipeQuantSavePipeline:
    DESCRIPTION = ("Save the quantized pipeline (safetensors) into your first diffusers model folder, so it loads "
                   "pre-quantized next time. Works for bitsandbytes, torchao int8/float8, and quanto on diffusers models.")
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE_TYPE, {"tooltip": "From Load Quantized Pipeline."}),
            "folder_name": ("STRING", {"default": "pipequant-saved",
                                       "tooltip": "New folder name under models/diffusers; never overwrites."}),
        }}

    def save(self, pipeline, folder_name):
        roots = comfy.model_roots()
        try:
            dest = save(pipeline, folder_name, roots[0] if roots else None)
        except ValidationError as exc:
            raise NodeInputError(exc.problems, describe(exc.problems, SAVE_NODE)) from None
        return {"ui": {"text": [f"saved to {dest}"]}}
