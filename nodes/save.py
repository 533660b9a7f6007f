"""Save Quantized Pipeline: write a pre-quantized copy into the first diffusers model folder."""

from __future__ import annotations

from ..resolver.keep import describe_save, folder_problems, save
from ..resolver.known import save_summary
from ..resolver.problems import ValidationError
from . import host
from .load import PIPELINE_TYPE
from .messages import NodeInputError, describe, validation_result


class PipeQuantSavePipeline:
    TITLE = "Save Quantized Pipeline"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Save the quantized pipeline (safetensors) into your first diffusers model folder, so it loads "
        "pre-quantized next time. " + save_summary()
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "From Load Quantized Pipeline."}),
                "folder_name": (
                    "STRING",
                    {
                        "default": "pipequant-saved",
                        "tooltip": "New folder name under models/diffusers; never overwrites.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder_name):
        """Before the run: a name that is taken in any model folder is refused now, not after quantizing."""
        return validation_result(folder_problems(folder_name, host.model_roots()), PipeQuantSavePipeline.TITLE)

    def save(self, pipeline, folder_name):
        try:
            # free in every root, the Hugging Face cache included; written into the first model folder
            dest = save(pipeline, folder_name, host.model_roots())
        except ValidationError as exc:
            raise NodeInputError(exc.problems, describe(exc.problems, PipeQuantSavePipeline.TITLE)) from None
        return {"ui": {"text": [describe_save(pipeline, dest)]}}
