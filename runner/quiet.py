"""Keep third-party import noise out of the command line's output (unless --verbose).

Importing torchao, bitsandbytes, torch, transformers and diffusers on a machine without a GPU
prints 5-7 warnings ("Failed to load ..._C_mxfp8...so", missing optional kernels, deprecations)
that say nothing about the user's workflow. They go through `logging`; their loggers are set to
ERROR before anything is imported, and torch's own log setup (which resets its loggers at import)
is told the same through TORCH_LOGS. Errors still show.
"""

from __future__ import annotations

import logging
import os
import warnings

LOGGERS = (
    "torchao",
    "bitsandbytes",
    "torch",
    "transformers",
    "diffusers",
    "accelerate",
    "optimum",
    "sdnq",
    "huggingface_hub",
)
MODULES = r"(torch|torchao|bitsandbytes|transformers|diffusers|accelerate|optimum|sdnq|huggingface_hub)(\.|$)"


def quiet_third_party() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch._logging: only errors
    os.environ.setdefault("SDNQ_LOGGER_NAME", "sdnq")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=MODULES)
