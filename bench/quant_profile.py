"""Measure what each quant type costs and how much it errs, and write the rows into the data file.

For every quant type of the catalogue that runs here: load a small CLIP text encoder whose
Linear weights are Gaussian (std 0.02, biases zero) through the backend's own config, then per
quantized Linear count its real bytes (quant state included) and compare its output on Gaussian
inputs with the float32 reference. Bytes are fitted as ``a*weights + b*rows + c`` (three Linear
shapes: 256x256, 1024x256, 256x1024), giving ``scale_bytes_per_weight = a - bits/8``,
``bytes_per_row = b``, ``bytes_per_layer = c``. The error proxy is the relative RMS error of the
layer outputs. Rows go to ``storage`` and ``error`` of ``resolver/data/measurements.json``
(replacing rows with the same backend, quant type, options and source); the planner reads them.

    python -m bench.quant_profile [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

SOURCE = "cpu-profile"
DTYPE = "bfloat16"
VARIANTS = {"double_quant": (False, True)}  # options that change storage, measured both ways


def _model(folder: Path):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=64,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModel(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.02)
                m.bias.zero_()
    model.to(getattr(torch, DTYPE)).save_pretrained(folder)
    return model.float()


def _cases():
    from pipequant.resolver.known import catalogue

    for name in catalogue.backend_names():
        backend = catalogue.get_backend(name)
        if backend.needs_file or not backend.installed():
            continue
        for qt in backend.quant_types:
            opts = [{}]
            for option, values in VARIANTS.items():
                if option in qt.options:
                    opts = [{option: v} for v in values]
            for o in opts:
                yield backend, qt, o


def _runs_here(qt) -> bool:
    import torch

    if qt.needs_cuda and not torch.cuda.is_available():
        return False
    return not (
        qt.min_compute_capability
        and (not torch.cuda.is_available() or torch.cuda.get_device_capability() < qt.min_compute_capability)
    )


def _fit(points):
    import numpy as np

    a = np.array([[n, rows, 1.0] for n, rows, _ in points])
    b = np.array([float(y) for _, _, y in points])
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return [float(c) for c in coef]


def _measure(folder: Path, reference, backend, qt, options) -> tuple[dict, dict]:
    import torch
    from transformers import CLIPTextModel

    from pipequant.resolver.keep import tensor_bytes

    dtype = getattr(torch, DTYPE)
    kwargs = {"dtype": dtype}
    if backend is not None:
        full = {o.name: o.default for o in backend.options} | options
        kwargs["quantization_config"] = backend.build_config("transformers", qt.name, dtype, full)
    model = CLIPTextModel.from_pretrained(folder, **kwargs)
    ref = dict(reference.named_modules())
    points, num, den = [], 0.0, 0.0
    gen = torch.Generator().manual_seed(1)
    for name, module in model.named_modules():
        if name not in ref or not isinstance(ref[name], torch.nn.Linear):
            continue
        r = ref[name]
        bias = module.bias
        bias_bytes = bias.untyped_storage().nbytes() if bias is not None else 0
        points.append((r.weight.numel(), r.out_features, tensor_bytes(module) - bias_bytes))
        x = torch.randn(64, r.in_features, generator=gen)
        with torch.no_grad():
            want = x @ r.weight.T
            got = module(x.to(dtype)).float() - (bias.float() if bias is not None else 0)
        num += float(((got - want) ** 2).sum())
        den += float((want**2).sum())
    a, b, c = _fit(points)
    bits = qt.bits if backend is not None else 8 * torch.finfo(dtype).bits / 8
    storage = {
        "backend": backend.name if backend else None,
        "quant_type": qt.name if backend else DTYPE,
        "options": options,
        "bits_per_weight": bits,
        "scale_bytes_per_weight": round(a - bits / 8, 5),
        "bytes_per_row": round(b, 3),
        "bytes_per_layer": round(c, 1),
        "source": SOURCE,
    }
    error = {
        "backend": storage["backend"],
        "quant_type": storage["quant_type"],
        "options": options,
        "rel_rms_error": round((num / den) ** 0.5, 5),
        "source": SOURCE,
    }
    return storage, error


def run() -> tuple[list[dict], list[dict]]:
    from pipequant.resolver.run import diffusers_context

    storage, errors = [], []
    with tempfile.TemporaryDirectory() as tmp, diffusers_context():
        folder = Path(tmp) / "clip"
        reference = _model(folder)

        class _Unquantized:
            name, bits = DTYPE, 16

        s, e = _measure(folder, reference, None, _Unquantized, {})
        errors.append(e)
        for backend, qt, options in _cases():
            if not _runs_here(qt):
                continue
            s, e = _measure(folder, reference, backend, qt, options)
            storage.append(s)
            errors.append(e)
    return storage, errors


def _key(r: dict) -> tuple:
    return r["backend"], r["quant_type"], json.dumps(r.get("options") or {}, sort_keys=True), r["source"]


def write(storage: list[dict], errors: list[dict]) -> None:
    from pipequant.resolver.known import measured

    data = json.loads(measured.DATA_FILE.read_text(encoding="utf-8"))
    for section, new in (("storage", storage), ("error", errors)):
        keys = {_key(r) for r in new}
        data[section] = [r for r in data.get(section, []) if _key(r) not in keys] + new
    data["sources"][SOURCE] = (
        f"bench/quant_profile.py: CLIP text encoder 256/1024 wide, Gaussian weights, {DTYPE}, {platform.machine()} CPU"
    )
    measured.DATA_FILE.write_text(_dump(data), encoding="utf-8")
    measured.data.cache_clear()


def _dump(data: dict) -> str:
    """One row per line, as the file is kept by hand too."""
    lines = ["{"]
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list):
            rows = [f"    {json.dumps(r)}" for r in value]
            lines.append(f'  "{key}": [\n' + ",\n".join(rows) + f"\n  ]{comma}")
        elif isinstance(value, dict) and value and key != "generations":
            rows = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(f'  "{key}": {{\n' + ",\n".join(rows) + f"\n  }}{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, indent=None)}{comma}")
    return "\n".join(lines) + "\n}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quant_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the rows into resolver/data/measurements.json")
    args = parser.parse_args(argv)
    storage, errors = run()
    for s, e in zip(storage, errors[1:]):
        print(
            f"{s['backend']:>18} {s['quant_type']:<18} {json.dumps(s['options']):<22} "
            f"bytes/w {s['bits_per_weight'] / 8 + s['scale_bytes_per_weight']:.4f}  row {s['bytes_per_row']:>6}  "
            f"layer {s['bytes_per_layer']:>7}  err {e['rel_rms_error']:.4f}"
        )
    print(f"{'(unquantized)':>18} {DTYPE:<18} err {errors[0]['rel_rms_error']:.4f}")
    if args.write:
        write(storage, errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
