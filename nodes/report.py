"""Pipeline Memory Report: what each component holds right now (bytes, dtype, device)."""
from __future__ import annotations

from ..resolver.memory import main_device, tensor_bytes
from ..resolver.report import format_table
from .load import PIPELINE_TYPE


def live_rows(result) -> list[dict]:
    """The load report, with bytes and devices re-measured now (offload moves components)."""
    rows = []
    for row in result.rows:
        module = getattr(result.pipeline, row["component"], None)
        if row["action"] != "not a model" and module is not None:
            row = {**row, "bytes": tensor_bytes(module), "device": main_device(module)}
        rows.append(row)
    return rows


def cuda_summary() -> str:
    import torch

    if not torch.cuda.is_available():
        return ""
    gib = 1024**3
    return (f"\nCUDA: {torch.cuda.memory_allocated() / gib:.2f} GB allocated, "
            f"peak {torch.cuda.max_memory_allocated() / gib:.2f} GB")


class PipeQuantMemoryReport:
    DESCRIPTION = "Show, per component, its quantization, real bytes in memory (quantized storage counted), dtype and device."
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("The memory table as text.",)
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pipeline": (PIPELINE_TYPE, {"tooltip": "From Load Quantized Pipeline."})}}

    def report(self, pipeline):
        text = format_table(live_rows(pipeline), pipeline.plan.notes) + cuda_summary()
        return {"ui": {"text": [text]}, "result": (text,)}
