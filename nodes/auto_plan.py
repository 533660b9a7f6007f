"""Auto Quantization Plan: choose each component's quantization to fit the GPU, and say why."""

from __future__ import annotations

from ..resolver.decide import GOALS, NothingFits, check_inputs, plan_for
from ..resolver.files import list_pipelines, resolve_model
from ..resolver.problems import Problem, ValidationError
from . import host
from .backend import CONFIG_TYPE
from .messages import raise_for, validation_result


class PipeQuantAutoPlan:
    TITLE = "Auto Quantization Plan"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Choose each component's quantization so the pipeline fits your GPU (or a budget you give), for "
        "a goal: quality, balanced, speed or smallest. Connect `quant_map` to Load Quantized Pipeline like a "
        "Per-Component Map; the plan table says what each component got, why, and the predicted peak."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (CONFIG_TYPE, "STRING")
    RETURN_NAMES = ("quant_map", "plan")
    OUTPUT_TOOLTIPS = (
        "A per-component quantization map (granular mode) for Load Quantized Pipeline.",
        (
            "The plan table: per component its choice, bytes, speed, error and why; the predicted peak; "
            "the alternatives rejected and why."
        ),
    )
    FUNCTION = "make_plan"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    list_pipelines(host.model_roots()),
                    {"tooltip": "The same pipeline folder as on Load Quantized Pipeline."},
                ),
                "budget_gb": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 100000.0,
                        "step": 0.5,
                        "tooltip": "GPU memory to plan for, in GiB. 0 = this GPU's free memory less a safety margin.",
                    },
                ),
                "goal": (
                    list(GOALS),
                    {
                        "default": "balanced",
                        "tooltip": "quality: least error that fits. speed: fastest measured that fits. "
                        "balanced: error and speed together. smallest: least memory.",
                    },
                ),
                "width": (
                    "INT",
                    {
                        "default": 1024,
                        "min": 64,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "Image width you will sample at (working memory grows with it).",
                    },
                ),
                "height": (
                    "INT",
                    {"default": 1024, "min": 64, "max": 8192, "step": 8, "tooltip": "Image height you will sample at."},
                ),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."}),
                "allow_offload": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Allow CPU offload when nothing fits on the GPU (the table "
                        "then says which offload to set on the Load node).",
                    },
                ),
            },
            "optional": {
                "num_frames": (
                    "INT",
                    {
                        "default": 33,
                        "min": 1,
                        "max": 1025,
                        "tooltip": "Video pipelines (Wan, HunyuanVideo, LTX): frames you will render; working "
                        "memory grows with them. Ignored for image pipelines.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        """One input, so that ComfyUI files a failure once (it repeats it per argument); the numbers
        are checked by ComfyUI (min/max) and, together, when the node runs (plan_for)."""
        try:
            resolve_model(model, host.model_roots())
        except ValidationError as exc:
            return validation_result(exc.problems, PipeQuantAutoPlan.TITLE)
        return True

    @classmethod
    def check(cls, model, budget_gb, goal, width, height, batch_size, allow_offload=True):
        """Every input together: True, or the text naming each input at fault."""
        problems = check_inputs(budget_gb, goal, width, height, batch_size)
        try:
            resolve_model(model, host.model_roots())
        except ValidationError as exc:
            problems += exc.problems
        return validation_result(problems, PipeQuantAutoPlan.TITLE)

    def make_plan(self, model, budget_gb, goal, width, height, batch_size, allow_offload=True, num_frames=33):
        try:
            folder = resolve_model(model, host.model_roots())
            result = plan_for(
                folder,
                budget_gb=budget_gb,
                goal=goal,
                width=width,
                height=height,
                batch_size=batch_size,
                allow_offload=allow_offload,
                num_frames=num_frames,
            )
        except NothingFits as exc:
            raise_for([Problem("nothing_fits", "budget_gb", str(exc), "")], PipeQuantAutoPlan.TITLE)
        except ValidationError as exc:
            raise_for(exc.problems, PipeQuantAutoPlan.TITLE)
        table = result.table()
        return {"ui": {"text": [table]}, "result": (result.spec, table)}
