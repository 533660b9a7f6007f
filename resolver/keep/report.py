"""What the user got: per component, its plan, real bytes, dtype, device and load time."""

from __future__ import annotations

from ..constants import DTYPE_BYTES, NOT_A_MODEL
from .memory import main_device, param_count, tensor_bytes


def is_quantized_weight(module) -> bool:
    """True for a layer whose weight is held by a quantization backend (bnb, torchao, quanto, GGUF,
    SDNQ: a plain Linear with a plain int8 weight, known by the dequantizer SDNQ attaches)."""
    import torch

    weight = getattr(module, "weight", None)
    if weight is None or not isinstance(weight, torch.Tensor):
        return False
    return (
        type(weight) not in (torch.Tensor, torch.nn.Parameter)
        or type(module).__module__.startswith("optimum.quanto")
        or getattr(module, "sdnq_dequantizer", None) is not None
    )


def quantized_layer_count(model) -> int:
    return sum(1 for m in model.modules() if is_quantized_weight(m))


def _dtype_of(model) -> str:
    import torch

    counts: dict[str, int] = {}
    for p in model.parameters():
        if p.is_floating_point() and type(p) in (torch.Tensor, torch.nn.Parameter):
            counts[str(p.dtype).replace("torch.", "")] = counts.get(str(p.dtype).replace("torch.", ""), 0) + p.numel()
    return max(counts, key=counts.get) if counts else "-"


def component_row(plan_row, info, model, load_seconds: float, config) -> dict:
    """One component's report row; `plan_row` is a ComponentPlan, `info` its ComponentInfo."""
    width = DTYPE_BYTES.get(plan_row.load_dtype, 2)
    # A pre-quantized file's header counts packed bytes; the loaded model knows the real shapes.
    before = (param_count(model) if info.prequantized else info.params) * width
    return {
        "component": plan_row.name,
        "class": plan_row.class_name,
        "library": plan_row.library,
        "action": plan_row.action,
        "backend": plan_row.spec.backend if plan_row.spec else info.prequantized,
        "quant_type": plan_row.spec.quant_type if plan_row.spec else None,
        "config": type(config).__name__ if config is not None else None,
        "dtype": _dtype_of(model),
        "device": main_device(model),
        "params": param_count(model),
        "quantized_layers": quantized_layer_count(model),
        "bytes": tensor_bytes(model),
        "bytes_before": before,
        "load_seconds": round(load_seconds, 3),
        "reused": False,
        "disk_cache": None,  # "read" | "written" | "not cached" when the load used the disk cache
    }


def other_row(plan_row) -> dict:
    return {
        "component": plan_row.name,
        "class": plan_row.class_name,
        "library": plan_row.library,
        "action": plan_row.action,
        "backend": None,
        "quant_type": None,
        "config": None,
        "dtype": "-",
        "device": "-",
        "params": 0,
        "quantized_layers": 0,
        "bytes": 0,
        "bytes_before": 0,
        "load_seconds": 0.0,
        "reused": False,
        "disk_cache": None,
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"


def totals(rows: list[dict]) -> dict:
    return {
        "bytes": sum(r["bytes"] for r in rows),
        "bytes_before": sum(r["bytes_before"] for r in rows),
        "load_seconds": round(sum(r["load_seconds"] for r in rows), 3),
    }


LEGEND = (
    "bytes = what the component holds in memory now (quantized storage and scales counted); before = the "
    "same weights unquantized, at the load dtype; TOTAL's ratio = bytes / before; (cached) = reused from "
    "memory, not loaded again"
)


def format_table(rows: list[dict], notes: list[str] = ()) -> str:
    """A fixed-width table a person can read on a node or in a terminal."""
    header = ("component", "class", "plan", "dtype", "device", "params", "bytes", "before", "load s")
    body = []
    for r in rows:
        if r["action"] == NOT_A_MODEL:
            continue
        if r["quant_type"]:
            plan = f"{r['backend']}:{r['quant_type']}"
        else:
            plan = f"{r['backend']} ({r['action']})" if r["backend"] else r["action"]
        if r["reused"]:
            plan += " (cached)"
        elif r.get("disk_cache") == "read":
            plan += " (disk cache)"
        body.append(
            (
                r["component"],
                r["class"] or "-",
                plan,
                r["dtype"],
                r["device"],
                f"{r['params']:,}",
                human_bytes(r["bytes"]),
                human_bytes(r["bytes_before"]),
                f"{r['load_seconds']:.2f}",
            )
        )
    t = totals(rows)
    ratio = f"{t['bytes'] / t['bytes_before']:.2f}x" if t["bytes_before"] else "-"
    body.append(
        (
            "TOTAL",
            "",
            ratio,
            "",
            "",
            "",
            human_bytes(t["bytes"]),
            human_bytes(t["bytes_before"]),
            f"{t['load_seconds']:.2f}",
        )
    )
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    line = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in body]
    out += [f"note: {n}" for n in notes]
    out.append(LEGEND)
    return "\n".join(out)


def table_data(rows: list[dict], notes: list[str] = ()) -> dict:
    """The table as data, for the editor to lay out at the width a node has (web/js/logic.mjs
    reportLines): one row per component (numbers as numbers), the TOTAL, the notes and the legend."""
    body = []
    for r in rows:
        if r["action"] == NOT_A_MODEL:
            continue
        source = "memory" if r["reused"] else "disk cache" if r.get("disk_cache") == "read" else ""
        body.append(
            {
                "component": r["component"],
                "class": r["class"] or "",
                "plan": r["quant_type"] or r["action"],
                "backend": r["backend"] or "",
                "from": source,
                "dtype": r["dtype"],
                "device": r["device"],
                "params": r["params"],
                "bytes": r["bytes"],
                "bytes_before": r["bytes_before"],
                "load_seconds": r["load_seconds"],
            }
        )
    return {"rows": body, "total": totals(rows), "notes": list(notes), "legend": LEGEND}


def live_rows(result) -> list[dict]:
    """A LoadResult's rows, with bytes and devices re-measured now (offload moves components)."""
    rows = []
    for row in result.rows:
        module = getattr(result.pipeline, row["component"], None)
        if row["action"] != NOT_A_MODEL and module is not None:
            row = {**row, "bytes": tensor_bytes(module), "device": main_device(module)}
        rows.append(row)
    return rows


def cuda_summary() -> str:
    """One line on CUDA memory now and at its peak ("" without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return ""
    gib = 1024**3
    return (
        f"\nCUDA: {torch.cuda.memory_allocated() / gib:.2f} GB allocated, "
        f"peak {torch.cuda.max_memory_allocated() / gib:.2f} GB"
    )


def live_report(result) -> str:
    """The memory table of a loaded pipeline as it is now."""
    return format_table(live_rows(result), result.notes) + cuda_summary()


def live_table(result) -> dict:
    """live_report's table as data (table_data), the CUDA line among the notes."""
    cuda = cuda_summary().strip()
    return table_data(live_rows(result), [*result.notes, *([cuda] if cuda else [])])
