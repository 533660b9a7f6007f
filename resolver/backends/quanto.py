"""optimum-quanto backend. diffusers calls the weight type `weights_dtype`, transformers `weights`."""
from __future__ import annotations

from dataclasses import dataclass

from .base import DIFFUSERS, MODULES_TO_NOT_CONVERT, Backend, QuantType, module_skip_list


@dataclass(frozen=True)
class Quanto(Backend):
    def build_config(self, library, quant_type, compute_dtype, options):
        weights = {"weights_dtype" if library == DIFFUSERS else "weights": quant_type}
        return self.config_class(library)(**weights, modules_to_not_convert=module_skip_list(options))


QUANTO = Quanto(
    name="quanto",
    label="optimum-quanto",
    modules=("optimum.quanto",),
    pip="pip install optimum-quanto",
    quant_types=(
        QuantType("int8", "int8", 8, ("modules_to_not_convert",)),
        QuantType("int4", "int4", 4, ("modules_to_not_convert",), scale_bytes_per_weight=4 / 128),
        QuantType("int2", "int2", 2, ("modules_to_not_convert",), scale_bytes_per_weight=4 / 128),
        QuantType("float8", "float8", 8, ("modules_to_not_convert",)),
    ),
    options=(MODULES_TO_NOT_CONVERT,),
    savable=("diffusers",),  # quanto-quantized transformers models cannot be saved (DESIGN.md)
    help="Quanto weight quantization; works on CPU.",
)
