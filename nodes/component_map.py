"""Per-Component Map: give one component its own config (granular mode); chain several."""

from __future__ import annotations

from ..resolver.links import chain, component_problems
from ..resolver.problems import ValidationError
from .backend import CONFIG_TYPE
from .messages import raise_for, validation_result


class PipeQuantComponentMap:
    TITLE = "Per-Component Map"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Give one pipeline component (transformer, text_encoder_2, vae, …) its own quantization. "
        "Chain several maps through `map`; connect the last one to Load Quantized Pipeline. "
        "Components not in the map stay unquantized."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (CONFIG_TYPE,)
    RETURN_NAMES = ("quant_map",)
    OUTPUT_TOOLTIPS = ("A per-component quantization map (granular mode).",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "component": (
                    "STRING",
                    {
                        "default": "transformer",
                        "tooltip": "Pipeline component to configure, as named in model_index.json "
                        "(the editor lists the connected model's components).",
                    },
                ),
            },
            "optional": {
                "config": (
                    CONFIG_TYPE,
                    {
                        "tooltip": "A Quantization Backend for this component. Leave unconnected to "
                        "keep the component unquantized."
                    },
                ),
                "map": (
                    CONFIG_TYPE,
                    {"tooltip": "An upstream Per-Component Map to extend (chain maps for several components)."},
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, component):
        return validation_result(component_problems(component), PipeQuantComponentMap.TITLE)

    def build(self, component, config=None, map=None):
        raise_for(
            component_problems(component), PipeQuantComponentMap.TITLE
        )  # e.g. a workflow that links a node into `component`
        try:
            return (chain(component, config, map),)
        except ValidationError as exc:
            raise_for(exc.problems, f"{PipeQuantComponentMap.TITLE} ({component.strip()})")
