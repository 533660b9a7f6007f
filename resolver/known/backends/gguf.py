"""GGUF: weights come quantized from a `.gguf` file; diffusers dequantizes them on the fly.

GGUF cannot go through `PipelineQuantizationConfig` (diffusers fails to serialise its dtype): the
component loads with `<ModelClass>.from_single_file(file, config=<pipeline>, subfolder=<name>)`
and the loader hands the model to the pipeline's `from_pretrained` (README "Facts").
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import DIFFUSERS, Backend, QuantType


@dataclass(frozen=True)
class GGUF(Backend):
    def build_config(self, library, quant_type, compute_dtype, options):
        return self.config_class(library)(compute_dtype=compute_dtype)

    def read_file(self, path):
        from ...gguf_file import read_gguf

        return read_gguf(path)

    def load_component(
        self, model_class, config, *, folder, pipeline_folder, name, file=None, dtype=None, local_files_only=True, **_
    ):
        # from_pretrained's other arguments do not apply: the weights come from the file alone.
        return model_class.from_single_file(
            str(file),
            quantization_config=config,
            config=str(pipeline_folder),
            subfolder=name,
            dtype=dtype,
            local_files_only=local_files_only,
        )


GGUF_BACKEND = GGUF(
    name="gguf",
    label="GGUF file",
    modules=("gguf",),
    pip="pip install gguf",
    quant_types=(
        QuantType(
            "from_file",
            "as stored in the file (Q8_0, Q4_0, Q4_K, …)",
            4.5,
            help="The quantization is whatever the .gguf file holds.",
        ),
    ),
    options=(),
    libraries=(DIFFUSERS,),  # transformers dequantizes GGUF text encoders on load: no memory saved
    global_mode=False,
    needs_file=True,
    file_suffix=".gguf",
    file_kind="GGUF",
    config_compute_dtype=True,
    plan_note="GGUF components load with from_single_file: PipelineQuantizationConfig cannot carry GGUF",
    help="Load one diffusers model (the transformer/UNet) from a pre-quantized .gguf file.",
)
