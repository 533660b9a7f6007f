"""bitsandbytes 4-bit (nf4/fp4) and 8-bit (LLM.int8) backends."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..devices import cuda_available
from .base import DIFFUSERS, MODULES_TO_NOT_CONVERT, Backend, Option, QuantType, module_skip_list

DOUBLE_QUANT = Option(
    "double_quant", "bool", False, "Quantize the quantization constants too (saves ~0.4 bits per weight)."
)
THRESHOLD = Option(
    "llm_int8_threshold",
    "float",
    6.0,
    "Outlier threshold of LLM.int8; larger keeps fewer columns in fp16.",
    min=0.0,
    max=100.0,
)


def _diffusers_bnb_runs_here(backend_name: str, config) -> bool:
    """diffusers' bnb quantizers refuse to load without a GPU; ask them rather than guess, so a
    patched quantizer (as in the tests) is honoured."""
    from diffusers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    quantizer = AUTO_QUANTIZER_MAPPING[backend_name](config)
    try:
        quantizer.validate_environment()
    except RuntimeError:
        return False
    return True


# Both bitsandbytes backends: saved as quant_method "bitsandbytes", and sequential offload fails.
_COMMON = dict(
    modules=("bitsandbytes",),
    pip="pip install bitsandbytes",
    family="bitsandbytes",
    quant_method="bitsandbytes",
    savable=("diffusers", "transformers"),
    sequential_offload=False,
    sequential_offload_error="Cannot copy out of meta tensor",
    gpu_only_libraries=(DIFFUSERS,),
)


@dataclass(frozen=True)
class _BitsAndBytes(Backend):
    def cpu_supported(self, library: str) -> bool:
        if library not in self.gpu_only_libraries:
            return True  # transformers' bnb path loads on CPU
        if "diffusers" not in sys.modules and not cuda_available():
            return False  # what the quantizer would answer, without importing diffusers (3 s) to ask it
        config = self.config_for(DIFFUSERS, self.quant_types[0].name, None, {})
        return _diffusers_bnb_runs_here(self.name, config)

    def after_load(self, module, *, prequantized):
        """bitsandbytes 0.50 repacks a 4-bit layer for its CPU kernel on the first forward, in
        place: absmax rounded to bf16 and transposed, and its inverse (run by every save) leaves
        absmax transposed, so a copy saved after a run reloads with scrambled scales and the cached
        module no longer matches its own disk cache entry. Keep the layers as loaded: every copy
        (disk cache entry, saved pipeline) then reproduces the original bit for bit."""
        for sub in module.modules():
            if hasattr(sub, "support_avx512bf16_for_cpu"):
                sub.support_avx512bf16_for_cpu = False


@dataclass(frozen=True)
class BitsAndBytes4Bit(_BitsAndBytes):
    def build_config(self, library, quant_type, compute_dtype, options):
        return self.config_class(library)(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=bool(options["double_quant"]),
            llm_int8_skip_modules=module_skip_list(options),
        )


@dataclass(frozen=True)
class BitsAndBytes8Bit(_BitsAndBytes):
    def build_config(self, library, quant_type, compute_dtype, options):
        return self.config_class(library)(
            load_in_8bit=True,
            llm_int8_threshold=float(options["llm_int8_threshold"]),
            llm_int8_skip_modules=module_skip_list(options),
        )


BNB_4BIT = BitsAndBytes4Bit(
    name="bitsandbytes_4bit",
    label="bitsandbytes 4-bit",
    quant_types=(
        QuantType(
            "nf4",
            "NF4 (4-bit NormalFloat)",
            4,
            ("double_quant", "modules_to_not_convert"),
            scale_bytes_per_weight=4 / 64,
            help="Best 4-bit quality for normally distributed weights.",
        ),
        QuantType(
            "fp4",
            "FP4 (4-bit float)",
            4,
            ("double_quant", "modules_to_not_convert"),
            scale_bytes_per_weight=4 / 64,
            help="4-bit floating point; nf4 usually keeps more quality.",
        ),
    ),
    options=(DOUBLE_QUANT, MODULES_TO_NOT_CONVERT),
    config_compute_dtype=True,
    **_COMMON,
    help="4-bit weights, dequantized on the fly; quarter of bf16 memory. diffusers needs a GPU for it.",
)

BNB_8BIT = BitsAndBytes8Bit(
    name="bitsandbytes_8bit",
    label="bitsandbytes 8-bit",
    quant_types=(
        QuantType(
            "int8",
            "LLM.int8 (8-bit)",
            8,
            ("llm_int8_threshold", "modules_to_not_convert"),
            scale_bytes_per_weight=0.0,
            help="8-bit weights with fp16 outlier columns.",
        ),
    ),
    options=(THRESHOLD, MODULES_TO_NOT_CONVERT),
    **_COMMON,
    help="8-bit weights; half of bf16 memory, slower than bf16. diffusers needs a GPU for it.",
)
