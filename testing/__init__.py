"""Test and demo tooling: tiny offline pipelines, a GGUF writer, bitsandbytes on CPU.

Used by the tests, the runner's demo and the benchmarks; the resolver never imports it.
"""

from .bnb_cpu import bnb_on_cpu
from .gguf_writer import write_gguf
from .lora_files import write_example_files, write_kohya_lora, write_peft_lora, write_wan_comfy_lora
from .pipelines import (
    FLUX_SIZES,
    MARKER,
    PIPELINE_NAMES,
    build_flux,
    build_sd,
    build_sd3,
    ensure_pipeline,
    flux_size_kwargs,
    pipeline_name,
)

__all__ = [
    "FLUX_SIZES",
    "MARKER",
    "PIPELINE_NAMES",
    "bnb_on_cpu",
    "build_flux",
    "build_sd",
    "build_sd3",
    "ensure_pipeline",
    "flux_size_kwargs",
    "pipeline_name",
    "write_example_files",
    "write_gguf",
    "write_kohya_lora",
    "write_peft_lora",
    "write_wan_comfy_lora",
]
