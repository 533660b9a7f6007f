"""Pipeline Memory Report: what each component holds right now (bytes, dtype, device)."""

from __future__ import annotations

from ..resolver.keep import live_report, live_table
from .load import PIPELINE_TYPE


class PipeQuantMemoryReport:
    TITLE = "Pipeline Memory Report"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Show, per component, its quantization, real bytes in memory (quantized storage counted), dtype and device."
    )
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
        text = live_report(pipeline)
        # The table as data too: the editor lays it out for the node's width (the text is the output).
        return {"ui": {"text": [text], "table": [live_table(pipeline)]}, "result": (text,)}
