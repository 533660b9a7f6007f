"""Estimate against real loads for the components too heavy for the test suite (the FLUX.1-dev
transformer: about 0.3 B parameters per extra double block): the architecture at full width with
one block of each kind, then one more of each kind in turn, loaded on CPU and extrapolated per
block to 19 + 38 blocks, beside the estimate of the hollow full-size component.

    python -m bench.estimate_truth [--arch flux|t5|clip] [--specs none,torchao:int8_weight_only,...] [--dtype bfloat16]

`t5` and `clip` (FLUX.1-dev's text encoders) are what tests/test_estimate_truth.py asserts; here
they print the errors themselves.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DEFAULT_SPECS = "none,bitsandbytes_4bit:nf4,bitsandbytes_4bit:nf4:dq,torchao:int8_weight_only,quanto:int8"


def _spec(text: str):
    if text == "none":
        return None, None, {}
    parts = text.split(":")
    return parts[0], parts[1], ({"double_quant": True} if parts[2:] == ["dq"] else {})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimate_truth", description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=DEFAULT_SPECS)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--root", default=None, help="scratch folder (about 3 GB of few-block models)")
    parser.add_argument("--arch", choices=("flux", "t5", "clip"), default="flux")
    args = parser.parse_args(argv)

    from pipequant.resolver.decide import KEEP, QUANTIZE, component_estimate
    from pipequant.resolver.files import inspect_model
    from pipequant.resolver.known import catalogue
    from pipequant.testing import bnb_on_cpu, hollow
    from pipequant.testing.real_bytes import cached_models, extrapolate, load_bytes

    archs = {
        "flux": (
            "transformer",
            "diffusers",
            "FluxTransformer2DModel",
            hollow.FLUX_TRANSFORMER,
            {"num_layers": 19, "num_single_layers": 38},
            1,
        ),
        "t5": ("text_encoder_2", "transformers", "T5EncoderModel", hollow.T5_XXL, {"num_layers": 24}, 0),
        "clip": ("text_encoder", "transformers", "CLIPTextModel", hollow.CLIP_L, {"num_hidden_layers": 12}, 0),
    }
    component, library, cls, config, layers, base = archs[args.arch]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.root) as tmp, bnb_on_cpu():
        flux = hollow.ensure_hollow("flux-dev", Path(tmp) / "hollow")
        info = inspect_model(flux).components[component]
        folders = cached_models(Path(tmp) / "few", library, cls, config, layers, base=base)
        for text in args.specs.split(","):
            backend, quant_type, options = _spec(text)
            be = catalogue.get_backend(backend) if backend else None
            start = time.perf_counter()
            sizes = {k: load_bytes(f, library, cls, args.dtype, be, quant_type, options) for k, f in folders.items()}
            real = extrapolate(sizes, layers, base=base)
            est = component_estimate(
                info, QUANTIZE if backend else KEEP, args.dtype, args.dtype, backend, quant_type, options
            )["bytes_after"]
            rows.append(
                {
                    "arch": args.arch,
                    "spec": text,
                    "dtype": args.dtype,
                    "real_extrapolated": real,
                    "estimate": est,
                    "error": round(est / real - 1, 5),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(
                f"{text:<28} real {real / 1e9:7.3f} GB  estimate {est / 1e9:7.3f} GB  "
                f"error {100 * (est / real - 1):+.2f} %  ({rows[-1]['seconds']} s)",
                flush=True,
            )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
