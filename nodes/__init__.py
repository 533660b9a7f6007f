"""The ComfyUI side: the node declarations (the work lives in ../resolver), the `host` shim of
ComfyUI services (host.py) and the editor's HTTP routes (routes.py)."""

from . import known_noise  # noqa: F401  (first: it quiets known third-party warnings at the pack's import)
from .auto_plan import PipeQuantAutoPlan
from .backend import PipeQuantBackend
from .component_map import PipeQuantComponentMap
from .load import PipeQuantLoadPipeline
from .lora import PipeQuantLoRA
from .report import PipeQuantMemoryReport
from .sampler import PipeQuantSampler
from .save import PipeQuantSavePipeline

NODE_CLASS_MAPPINGS = {
    "PipeQuantBackend": PipeQuantBackend,
    "PipeQuantComponentMap": PipeQuantComponentMap,
    "PipeQuantLoadPipeline": PipeQuantLoadPipeline,
    "PipeQuantSampler": PipeQuantSampler,
    "PipeQuantMemoryReport": PipeQuantMemoryReport,
    "PipeQuantSavePipeline": PipeQuantSavePipeline,
    "PipeQuantAutoPlan": PipeQuantAutoPlan,
    "PipeQuantLoRA": PipeQuantLoRA,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "PipeQuantBackend": "Quantization Backend",
    "PipeQuantComponentMap": "Per-Component Map",
    "PipeQuantLoadPipeline": "Load Quantized Pipeline",
    "PipeQuantSampler": "Quantized Pipeline Sampler",
    "PipeQuantMemoryReport": "Pipeline Memory Report",
    "PipeQuantSavePipeline": "Save Quantized Pipeline",
    "PipeQuantAutoPlan": "Auto Quantization Plan",
    "PipeQuantLoRA": "Apply LoRA",
}
