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

#: diffusers' component names for the model run every step.
DENOISERS = ("transformer", "unet")


def denoiser_name(names) -> str | None:
    """The denoiser among a pipeline's component names, or None."""
    return next((n for n in DENOISERS if n in names), None)
