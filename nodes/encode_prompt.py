"""Encode Prompt with Pipeline: a CONDITIONING in core's layout for the family, computed by the
pipeline's own (possibly quantized) text encoders."""

from __future__ import annotations

from ..resolver.decide import prompt_problems
from ..resolver.run import activate, encode_prompt, families_text, family_of
from .load import PIPELINE_TYPE
from .messages import raise_for, validation_result
from .prompt_checks import verdict
from .to_comfy import family_problems, model_family_problems

ENCODE_NODE = "Encode Prompt with Pipeline"


def conditioning(pipeline, text: str, width: int = 1024, height: int = 1024, max_sequence_length: int = 0):
    """[[states, {"pooled_output": ...}]] as core's CLIPTextEncode gives for the family; SDXL adds
    the size conditions (width/height, no crop, target = size) as CLIPTextEncodeSDXL does."""
    pipe = pipeline.pipeline
    activate(pipeline)  # the text encoders carry exactly this pipeline's LoRA stack
    encoded = encode_prompt(pipe, text, max_sequence_length=max_sequence_length)
    extras = dict(encoded.extras)
    if family_of(pipe) == "sdxl":
        extras.update(width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height)
    return [[encoded.states, extras]]


class PipeQuantEncodePrompt:
    TITLE = "Encode Prompt with Pipeline"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Encode a prompt with the pipeline's own text encoders (they stay quantized) into a CONDITIONING "
        "for core's KSampler, ConditioningCombine, ConditioningZeroOut... Families: " + families_text() + "."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The prompt as ComfyUI CONDITIONING, in the layout core's text encoders give this family.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (
                    PIPELINE_TYPE,
                    {"tooltip": "From Load Quantized Pipeline (or Apply LoRA). Families: " + families_text() + "."},
                ),
                "text": (
                    "STRING",
                    {
                        "default": "a photo of a cat",
                        "multiline": True,
                        "tooltip": "The prompt (at most 8192 characters).",
                    },
                ),
            },
            "optional": {
                "width": (
                    "INT",
                    {"default": 1024, "min": 16, "max": 8192, "step": 8, "tooltip": "SDXL size condition (width)."},
                ),
                "height": (
                    "INT",
                    {"default": 1024, "min": 16, "max": 8192, "step": 8, "tooltip": "SDXL size condition (height)."},
                ),
                "max_sequence_length": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 512,
                        "tooltip": "Prompt tokens: T5 for FLUX/SD3/HiDream/Wan/LTX, the LLM encoder for Qwen-Image/Lumina 2/"
                        "Z-Image/HunyuanVideo; 0 = pipeline default (Wan: 512).",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, pipeline):
        """Only `pipeline`, so that ComfyUI files a refusal once, on that input (it repeats it per
        argument): the Load node's model's family, from the queued prompt (prompt_checks.py). The
        text is checked first thing when the node runs, and by the runner's `check`."""
        return verdict()

    @classmethod
    def check(cls, text):
        """The headless runner's validate: the prompt text."""
        return validation_result(prompt_problems(text, "text"), ENCODE_NODE)

    CHECKED_AT_QUEUE = True  # prompt_checks.on_prompt keeps check_model's verdict for VALIDATE_INPUTS

    @classmethod
    def check_model(cls, model, **_inputs):
        """Before Run (the queue's check and the runner's): the folder's family is one the bridge maps."""
        return model_family_problems(model)

    def encode(self, pipeline, text, width=1024, height=1024, max_sequence_length=0):
        raise_for(prompt_problems(text, "text") + family_problems(pipeline, ENCODE_NODE), ENCODE_NODE)
        return (conditioning(pipeline, text, width, height, max_sequence_length),)
