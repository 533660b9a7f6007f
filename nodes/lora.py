"""Apply LoRA: put one more LoRA on a loaded pipeline's adapter stack (chain several)."""

from __future__ import annotations

from dataclasses import replace

from ..resolver.keep import LoadResult
from ..resolver.problems import ValidationError
from ..resolver.run import EXPERTS, STRENGTH_RANGE, list_loras, load_adapter, make_spec, placement, resolve_lora
from . import host
from .load import PIPELINE_TYPE
from .messages import NodeInputError, describe, validation_result


class PipeQuantLoRA:
    TITLE = "Apply LoRA"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Apply a LoRA (.safetensors from models/loras: diffusers/peft, kohya or xlabs layout) to a loaded "
        "pipeline. Chain several to stack them. The weights load once; changing a strength or removing "
        "the node needs no reload."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (PIPELINE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The same pipeline with this LoRA added to its stack.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        lo, hi = STRENGTH_RANGE
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "From Load Quantized Pipeline or another Apply LoRA."}),
                "lora_name": (list_loras(host.lora_roots()), {"tooltip": "A LoRA file under ComfyUI's models/loras."}),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": lo,
                        "max": hi,
                        "step": 0.01,
                        "tooltip": "How strongly the LoRA changes the transformer/UNet; 0 = off.",
                    },
                ),
            },
            "optional": {
                "strength_text_encoder": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": lo,
                        "max": hi,
                        "step": 0.01,
                        "tooltip": "Strength on the text encoders, for LoRAs that carry text-encoder weights.",
                    },
                ),
                "expert": (
                    list(EXPERTS),
                    {
                        "default": EXPERTS[0],
                        "tooltip": "Pipelines with two denoisers (Wan 2.2 A14B: transformer = high noise, transformer_2 "
                        "= low noise): which one takes the LoRA. auto = the one(s) the file targets: its keys, else "
                        "its name (high_noise / low_noise), else both. Other pipelines: leave on auto.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        try:
            resolve_lora(lora_name, host.lora_roots())
        except ValidationError as exc:
            return validation_result(exc.problems, PipeQuantLoRA.TITLE)
        return True

    @classmethod
    def IS_CHANGED(cls, lora_name, **kwargs):
        """Re-run when the LoRA file changes on disk."""
        try:
            stat = resolve_lora(lora_name, host.lora_roots()).stat()
            return f"{stat.st_size}:{stat.st_mtime_ns}"
        except (ValidationError, OSError):
            return ""

    def apply(self, pipeline: LoadResult, lora_name, strength, strength_text_encoder=1.0, expert=EXPERTS[0]):
        try:
            spec = make_spec(lora_name, host.lora_roots(), strength, strength_text_encoder, expert)
            stack = {s.adapter_name for s in pipeline.loras} | {spec.adapter_name}
            load_adapter(pipeline, spec, keep=stack)  # checked against the pipeline before anything changes
            spec = replace(spec, placed=placement(pipeline.pipeline, spec))  # which expert(s), for the report
        except ValidationError as exc:
            raise NodeInputError(exc.problems, describe(exc.problems, PipeQuantLoRA.TITLE)) from None
        return (pipeline.with_lora(spec),)
