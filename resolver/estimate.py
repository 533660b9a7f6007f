"""Estimate a plan's memory before loading: from config files and safetensors headers only.

Quantized bytes = quantized Linear weights x bits / 8 + their scales; everything else stays at
the component's load dtype. Components read from a backend's file (GGUF) take the file's size.
"""
from __future__ import annotations

from . import catalogue
from .constants import DTYPE_BYTES, NOT_A_MODEL, PREQUANTIZED, QUANTIZE
from .inspect_model import linear_layers
from .plan import Plan


def estimate(plan: Plan) -> dict:
    rows = []
    for row in plan.components.values():
        if row.action == NOT_A_MODEL:
            continue
        info = plan.model.components[row.name]
        width = DTYPE_BYTES[row.load_dtype]
        before = info.params * DTYPE_BYTES[plan.dtype]
        after = info.params * width
        quantized = 0
        if row.action == QUANTIZE:
            backend = catalogue.get_backend(row.spec.backend)
            quant = backend.quant_type(row.spec.quant_type)
            skip = list(row.spec.options_dict.get("modules_to_not_convert") or [])
            quantized = sum(n for name, n in linear_layers(info)
                            if not any(backend.skips(info.library, name, s) for s in skip))
            after -= quantized * width
            after += quantized * (quant.bits / 8 + quant.scale_bytes_per_weight)
        elif row.action == PREQUANTIZED:
            after = info.disk_bytes  # stored quantized: loads as it is on disk
        elif row.from_file and row.gguf_path is not None:
            after = row.gguf_path.stat().st_size
            quantized = info.params
        rows.append({"component": row.name, "action": row.action,
                     "backend": row.spec.backend if row.spec else None,
                     "quant_type": row.spec.quant_type if row.spec else None,
                     "params": info.params, "quantized_params": quantized,
                     "bytes_before": int(before), "bytes_after": int(after)})
    total_before = sum(r["bytes_before"] for r in rows)
    total_after = sum(r["bytes_after"] for r in rows)
    return {"components": rows, "total": {"bytes_before": total_before, "bytes_after": total_after,
                                          "ratio": round(total_after / total_before, 4) if total_before else None}}
