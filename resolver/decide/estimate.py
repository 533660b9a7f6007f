"""Estimate a plan's memory before loading: from config files and safetensors headers only.

Per component, the parameters the library's quantizer quantizes cost what the data file measured
for that quant type (bits, scales per weight, per row and per layer); every other parameter stays
at the load dtype, or float32 where the model class keeps it so (``footprint``). GGUF components
take the file's size; pre-quantized ones their stored bytes. "before" is what the same component
would hold loaded unquantized at the plan's dtype. ``bytes_read`` follows the weight files the
load reads (a diffusers ``variant`` such as ``fp16`` picks its own files).
"""

from __future__ import annotations

from pathlib import Path

from ..constants import DTYPE_BYTES, NOT_A_MODEL, PREQUANTIZED, QUANTIZE  # noqa: F401 (DTYPE_BYTES re-exported)
from ..files import shape_store
from ..files.inspect_model import ComponentInfo
from ..gguf_file import GGUFFileError, read_gguf
from ..known import catalogue, measured
from .footprint import component_bytes, layout, quantized_weights
from .plan import Plan


def variant_files(info: ComponentInfo, variant: str | None) -> list[Path]:
    """The safetensors files a load with `variant` reads: `<stem>.<variant>.safetensors` (or its
    shards) where the component has them, else its plain files, as diffusers falls back."""
    if not variant or variant == "default":
        return list(info.weight_files)
    folder = info.folder
    found = (
        sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix == ".safetensors" and p.name.split(".")[-2] == variant
        )
        if folder.is_dir()
        else []
    )
    return found or list(info.weight_files)


def storage_for(backend_name: str, quant_type: str, options: dict) -> dict:
    """The measured storage of a quant type, or the catalogue's nominal bits when never measured."""
    backend = catalogue.get_backend(backend_name)
    full = {o.name: o.default for o in backend.options} | options
    found = measured.storage(backend_name, quant_type, full)
    if found is not None:
        return found
    qt = backend.quant_type(quant_type)
    return {
        "bits_per_weight": qt.bits,
        "scale_bytes_per_weight": qt.scale_bytes_per_weight,
        "bytes_per_weight": qt.bits / 8 + qt.scale_bytes_per_weight,
        "bytes_per_row": 0.0,
        "bytes_per_layer": 0.0,
        "source": "nominal (not measured)",
    }


def quantized_params(info: ComponentInfo, backend_name: str, quant_type: str, options: dict) -> frozenset[str]:
    """Parameter names the backend's quantizer converts in this component (skip lists applied)."""
    relevant = tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items() if k == "modules_to_not_convert")
    )
    return quantized_weights(info, backend_name, quant_type, relevant)


def component_estimate(
    info: ComponentInfo,
    action: str,
    load_dtype: str,
    plan_dtype: str,
    backend: str | None = None,
    quant_type: str | None = None,
    options: dict | None = None,
    gguf_path: Path | None = None,
    variant: str | None = None,
    from_file: bool = False,
) -> dict:
    lay = layout(info)
    before = component_bytes(info, plan_dtype)
    quantized, skipped, after = 0, [], component_bytes(info, load_dtype)
    if action == QUANTIZE:
        names = quantized_params(info, backend, quant_type, options or {})
        storage = storage_for(backend, quant_type, options or {})
        after = component_bytes(info, load_dtype, names, storage)
        sizes = {t.name: t.numel for t in lay.tensors}
        quantized = sum(sizes[n] for n in names)
        skipped = sorted(n.removesuffix(".weight") for n, _, _ in lay.linear_weights if n not in names)
    elif action == PREQUANTIZED:
        after = info.disk_bytes  # stored quantized: loads as it is on disk
    elif from_file and gguf_path is not None:
        after = file_bytes(gguf_path, load_dtype)
        quantized = lay.params
    files = variant_files(info, variant) if not from_file else ([gguf_path] if gguf_path else [])
    return {
        "component": info.name,
        "action": action,
        "backend": backend,
        "quant_type": quant_type,
        "params": lay.params,
        "quantized_params": quantized,
        "unquantized_linears": skipped,
        "bytes_before": int(before),
        "bytes_after": int(after),
        "bytes_read": sum(f.stat().st_size for f in files if f is not None),
    }


def file_bytes(path: Path, load_dtype: str) -> int:
    """What a GGUF component holds once loaded: its packed tensors as stored, its float tensors at
    the load dtype (the file's size counted F32 norms twice and its header: 17 % high on tiny FLUX)."""
    try:
        return read_gguf(path).loaded_bytes(DTYPE_BYTES[load_dtype])
    except (GGUFFileError, KeyError):
        return path.stat().st_size


@shape_store.batched()  # the facts it computes, written once per shape at the end
def estimate(plan: Plan, variant: str | None = None) -> dict:
    variant = variant if variant is not None else getattr(plan, "variant", None)
    rows = []
    for row in plan.components.values():
        if row.action == NOT_A_MODEL:
            continue
        info = plan.model.components[row.name]
        rows.append(
            component_estimate(
                info,
                row.action,
                row.load_dtype,
                plan.dtype,
                row.spec.backend if row.spec else None,
                row.spec.quant_type if row.spec else None,
                row.spec.options_dict if row.spec else None,
                row.gguf_path,
                variant,
                row.from_file,
            )
        )
    total_before = sum(r["bytes_before"] for r in rows)
    total_after = sum(r["bytes_after"] for r in rows)
    return {
        "components": rows,
        "total": {
            "bytes_before": total_before,
            "bytes_after": total_after,
            "bytes_read": sum(r["bytes_read"] for r in rows),
            "ratio": round(total_after / total_before, 4) if total_before else None,
        },
    }
