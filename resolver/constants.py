"""The words and numbers several modules share, each written once.

Load dtypes and their widths, and the plan's action names (what happens to each component). The
backend catalogue (``catalogue.py`` + ``backends/``) is the home of everything per backend.
"""

from __future__ import annotations

#: dtypes a pipeline's unquantized weights load in; the first is the default.
LOAD_DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_DTYPE = LOAD_DTYPES[0]
#: dtypes a backend's quantized layers compute in; "auto" = the load dtype.
COMPUTE_DTYPES = ("auto",) + LOAD_DTYPES
#: bytes per element of each load dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# What the plan does with a component. A component whose weights come from a backend's own file
# (GGUF) has that backend's name as its action instead (``ComponentPlan.from_file``).
QUANTIZE = "quantize"
KEEP = "keep"
PREQUANTIZED = "pre-quantized"
NOT_A_MODEL = "not a model"
ACTIONS = (QUANTIZE, KEEP, PREQUANTIZED, NOT_A_MODEL)

# The two libraries a component's class comes from (each has its own quantization config classes).
DIFFUSERS = "diffusers"
TRANSFORMERS = "transformers"

#: torch.compile modes for the denoiser (``run/compile.py``).
COMPILE_MODES = ("none", "regional", "full")

#: diffusers' component names for the models run every step: the main one first, then second
#: experts (Wan 2.2 A14B's low-noise `transformer_2`, switched to at the pipeline's boundary_ratio).
DENOISERS = ("transformer", "unet", "transformer_2", "unet_2")


def denoiser_name(names) -> str | None:
    """The main denoiser among a pipeline's component names, or None."""
    return next((n for n in DENOISERS if n in names), None)


def denoiser_names(names) -> list[str]:
    """Every denoiser among a pipeline's component names, the main one first."""
    return [n for n in DENOISERS if n in names]
