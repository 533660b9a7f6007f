"""GGUF: weights come quantized from a `.gguf` file; diffusers dequantizes them on the fly.

GGUF cannot go through `PipelineQuantizationConfig` (diffusers fails to serialise its dtype): the
loader reads the file with `from_single_file` and hands the model to `from_pretrained`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import DIFFUSERS, Backend, QuantType


@dataclass(frozen=True)
class GGUF(Backend):
    def build_config(self, library, quant_type, compute_dtype, options):
        return self.config_class(library)(compute_dtype=compute_dtype)


GGUF_BACKEND = GGUF(
    name="gguf",
    label="GGUF file",
    modules=("gguf",),
    pip="pip install gguf",
    quant_types=(
        QuantType("from_file", "as stored in the file (Q8_0, Q4_0, Q4_K, …)", 4.5,
                  help="The quantization is whatever the .gguf file holds."),
    ),
    options=(),
    libraries=(DIFFUSERS,),  # transformers dequantizes GGUF text encoders on load: no memory saved
    global_mode=False,
    needs_file=True,
    config_compute_dtype=True,
    help="Load one diffusers model (the transformer/UNet) from a pre-quantized .gguf file.",
)
