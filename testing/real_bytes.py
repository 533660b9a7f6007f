"""Bytes a real CPU load holds, for an architecture at full width with few layers, extrapolated
per layer to the full depth: the measurement the estimate is checked against (a full-size load
does not fit a small machine).

    real(full) = real(base) + sum over layer kinds k of (real(base + one more k) - real(base)) x (n_k - base)
"""

from __future__ import annotations

import json
from pathlib import Path

from .hollow import meta_model


def _write(folder: Path, library: str, class_name: str, config: dict, seed: int = 0) -> None:
    """Save a random-weight instance (Gaussian, std 0.02: fast, no per-layer init) with its config."""
    import torch

    torch.manual_seed(seed)
    model = meta_model(library, class_name, config).to_empty(device="cpu")
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # to_empty gives tied parameters (T5's shared / embed_tokens) separate storage
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.normal_(0, 0.02)
            else:
                t.zero_()
    model.to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    if library == "diffusers":
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.config.torch_dtype = "bfloat16"
        model.save_pretrained(folder, safe_serialization=True)
    del model


def load_bytes(
    folder: Path, library: str, class_name: str, dtype: str, backend=None, quant_type=None, options=None
) -> int:
    """Load through the library's from_pretrained with the backend's own config, as the pack
    does, and count every storage (quantized state included)."""
    import diffusers
    import torch
    import transformers

    from ..resolver.keep import tensor_bytes
    from ..resolver.run import diffusers_context

    cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
    kwargs = {"dtype": getattr(torch, dtype), "low_cpu_mem_usage": True}
    if backend is not None:
        full = {o.name: o.default for o in backend.options} | dict(options or {})
        # No device_map: diffusers' torchao quantizer adds every module mapped to "cpu" to its skip
        # list, so {"": "cpu"} would load unquantized (the pack passes a device map only for CUDA).
        kwargs["quantization_config"] = backend.build_config(library, quant_type, getattr(torch, dtype), full)
    with diffusers_context():
        model = cls.from_pretrained(folder, **kwargs)
        n = tensor_bytes(model)
    del model
    return n


def cached_models(
    root: Path, library: str, class_name: str, config: dict, layer_fields: dict[str, int], base: int = 1
) -> dict:
    """Write the few-layer models once under `root` (for several loads): `base` layers of every
    kind, then one more of each kind in turn. Returns kind (None: the base) -> folder."""
    out = {}
    base_cfg = {**config, **dict.fromkeys(layer_fields, base)}
    for kind in [None, *layer_fields]:
        cfg = dict(base_cfg)
        if kind is not None:
            cfg[kind] = base + 1
        folder = Path(root) / f"{class_name}-{kind or 'base'}"
        marker = folder / ".recipe.json"
        recipe = json.dumps(cfg, sort_keys=True)
        if not marker.exists() or marker.read_text() != recipe:
            _write(folder, library, class_name, cfg)
            marker.write_text(recipe)
        out[kind] = folder
    return out


def extrapolate(sizes: dict, layer_fields: dict[str, int], base: int = 1) -> int:
    total = sizes[None]
    for kind, full in layer_fields.items():
        total += (sizes[kind] - sizes[None]) * (full - base)
    return total
