"""Write resolver/data/shape_seed.json: the shape facts of the hollow full-size pipelines (FLUX.1-dev,
FLUX.1-schnell, SD3.5 Large, SDXL), computed by the libraries installed here.

    python -m pipequant.testing.shape_seed [--models /tmp/hollow] [--out resolver/data/shape_seed.json]

Each component's facts are computed the usual way (meta-device builds, each backend's own quantizer
asked) into an empty shape store: its layout, the float32-kept names for every load dtype, and what
every quant type of every backend quantizes; then `pipequant plan` runs on each model (CPU and an
H100 profile) so that whatever else a plan asks is there too. FLUX.1-dev's text encoders are seeded with the hub's
config.json as well (hollow.HUB_T5_XXL, HUB_CLIP_L). The store's files become the seed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("flux-dev", "flux-schnell", "sd35-large", "sdxl")
GPU_PROFILE = json.dumps({"name": "NVIDIA H100", "total_gb": 80.0, "free_gb": 78.0, "compute_capability": [9, 0]})


def _compute_facts(folder: Path, log) -> dict:
    """Every fact of every module component of `folder`, and of the same component with its hub
    config.json where that differs; returns {"library.Class": defaults}."""
    from ..resolver.decide import compute_shape_facts
    from ..resolver.files import inspect_model
    from .hollow import HUB_CLIP_L, HUB_T5_XXL

    hub_configs = {"CLIPTextModel": HUB_CLIP_L, "T5EncoderModel": HUB_T5_XXL}
    infos = [i for i in inspect_model(folder).components.values() if i.is_module]
    infos += [i.with_config(hub_configs[i.class_name]) for i in infos if i.class_name in hub_configs]
    defaults = {}
    for info in infos:
        defaults.update(compute_shape_facts(info, log))
    return defaults


def _plan_everything(models: Path) -> None:
    from ..runner.cli import main

    for kind in MODELS:
        for extra in ([], ["--device-profile", GPU_PROFILE]):
            for budget in ("0", "8", "24"):
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    main(["plan", f"hollow-{kind}", "--models", str(models), "--budget", budget, "--json", *extra])


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="where the hollow pipelines are built")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "resolver/data/shape_seed.json"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        os.environ["PIPEQUANT_SHAPE_CACHE"] = str(store)
        os.environ["PIPEQUANT_SHAPE_SEED"] = "off"  # computed from the libraries, never from an older seed
        from . import hollow

        models = args.models or Path(tmp) / "models"
        defaults: dict = {}
        for kind in MODELS:
            folder = hollow.ensure_hollow(kind, models)
            print(f"{folder.name}: computing facts", flush=True)
            defaults.update(_compute_facts(folder, print))
        _plan_everything(models)
        from ..resolver.files import shape_store

        seed = shape_store.export_seed(defaults)
    seed["command"] = "python -m pipequant.testing.shape_seed" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    seed["commit"] = _commit()
    seed["written"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    text = json.dumps(seed, sort_keys=True, separators=(",", ":"))
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out} ({len(text) / 1e6:.2f} MB, {len(seed['shapes'])} shapes, {len(seed['sets'])} name sets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
