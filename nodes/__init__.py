"""The ComfyUI side: the node declarations (the work lives in ../resolver), the `host` shim of
ComfyUI services (host.py) and the editor's HTTP routes (routes.py)."""

from . import known_noise  # noqa: F401  (first: it quiets known third-party warnings at the pack's import)
from .auto_plan import PipeQuantAutoPlan
from .backend import PipeQuantBackend
from .component_map import PipeQuantComponentMap
from .encode_prompt import PipeQuantEncodePrompt
from .load import PipeQuantLoadPipeline
from .lora import PipeQuantLoRA
from .quality_check import PipeQuantQualityCheck
from .report import PipeQuantMemoryReport
from .sampler import PipeQuantSampler
from .save import PipeQuantSavePipeline
from .to_comfy import PipeQuantToComfy

NODES = (
    PipeQuantBackend,
    PipeQuantComponentMap,
    PipeQuantLoadPipeline,
    PipeQuantSampler,
    PipeQuantMemoryReport,
    PipeQuantSavePipeline,
    PipeQuantAutoPlan,
    PipeQuantLoRA,
    PipeQuantQualityCheck,
    PipeQuantToComfy,
    PipeQuantEncodePrompt,
)
# Node ids are the class names and are frozen: saved workflows name them.
NODE_CLASS_MAPPINGS = {node.__name__: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.__name__: node.TITLE for node in NODES}
