"""Per-Component Map: give one component its own config (granular mode); chain several."""
from __future__ import annotations

from ..resolver.problems import Problem, ValidationError
from ..resolver.spec import BackendSpec, ComponentMap
from .backend import CONFIG_TYPE
from .messages import MAP_NODE, raise_for, validation_result

UNQUANTIZED = "leave unquantized"


class PipeQuantComponentMap:
    DESCRIPTION = ("Give one pipeline component (transformer, text_encoder_2, vae, …) its own quantization. "
                   "Chain several maps through `map`; connect the last one to Load Quantized Pipeline. "
                   "Components not in the map stay unquantized.")
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (CONFIG_TYPE,)
    RETURN_NAMES = ("quant_map",)
    OUTPUT_TOOLTIPS = ("A per-component quantization map (granular mode).",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "component": ("STRING", {"default": "transformer",
                                         "tooltip": "Pipeline component to configure, as named in model_index.json "
                                                    "(the editor lists the connected model's components)."}),
            },
            "optional": {
                "config": (CONFIG_TYPE, {"tooltip": "A Quantization Backend for this component. Leave unconnected to "
                                                    "keep the component unquantized."}),
                "map": (CONFIG_TYPE, {"tooltip": "An upstream Per-Component Map to extend (chain maps for several "
                                                 "components)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, component):
        problems = []
        if not isinstance(component, str) or not component.strip() or not component.strip().replace("_", "").isalnum():
            problems.append(Problem("component_syntax", "component", f"{component!r} is not a component name",
                                    'e.g. "transformer" or "text_encoder_2"'))
        return validation_result(problems, MAP_NODE)

    def build(self, component, config=None, map=None):
        if self.VALIDATE_INPUTS(component) is not True:  # e.g. a workflow that links a node into `component`
            raise_for([Problem("component_syntax", "component", f"{component!r} is not a component name",
                               'e.g. "transformer" or "text_encoder_2"')], MAP_NODE)
        component = component.strip()
        problems = []
        if config is not None and not isinstance(config, BackendSpec):
            problems.append(Problem("expected_global", "config",
                                    "a Per-Component Map was connected where a Quantization Backend is expected",
                                    "connect a Quantization Backend to `config`, and chain maps through `map`"))
        if map is not None and not isinstance(map, ComponentMap):
            problems.append(Problem("expected_map", "map",
                                    "a Quantization Backend was connected to `map`, which chains Per-Component Maps",
                                    "connect it to `config` instead"))
        if isinstance(config, BackendSpec) and config.components not in (None, (component,)):
            problems.append(Problem("components_in_map", "config",
                                    f"the connected Quantization Backend lists components ({', '.join(config.components)}); "
                                    f'in a map it applies to "{component}" only',
                                    "clear the backend's components field"))
        raise_for(problems, f"{MAP_NODE} ({component})")
        base = map or ComponentMap()
        try:
            return (base.with_entry(component, config),)
        except ValidationError as exc:  # component_mapped_twice
            raise_for(exc.problems, f"{MAP_NODE} ({component})")
