"""Reading and keeping weights: the loader, the component and disk caches, save, bytes and the report."""

from . import disk_cache
from .cache import COMPONENT_CACHE, ComponentCache, free_memory, trim_heap
from .deferred_write import wait_for_writes
from .disk_cache import DiskCache, configured_folder, default_folder
from .load import LoadError, LoadResult, load, load_plan, plan_load
from .memory import inner_tensors, main_device, param_count, tensor_bytes
from .report import human_bytes, is_quantized_weight, live_report, live_table
from .save import SaveError, describe_save, folder_problems, plan_problems, save

__all__ = [
    "COMPONENT_CACHE",
    "ComponentCache",
    "DiskCache",
    "LoadError",
    "LoadResult",
    "SaveError",
    "configured_folder",
    "default_folder",
    "describe_save",
    "disk_cache",
    "folder_problems",
    "free_memory",
    "human_bytes",
    "inner_tensors",
    "is_quantized_weight",
    "live_report",
    "live_table",
    "load",
    "load_plan",
    "main_device",
    "param_count",
    "plan_load",
    "plan_problems",
    "save",
    "tensor_bytes",
    "trim_heap",
    "wait_for_writes",
]
