"""The synthetic FLUX-shaped pipelines the benchmarks load, built once and kept between runs.

Built by `pipequant.testing.ensure_pipeline` (random weights, real FLUX.1 layout: double + single
blocks, CLIP, T5, VAE), saved as sharded safetensors like a hub snapshot (`config.SHARD_SIZE`).
Saved pre-quantized copies carry their own marker (`SAVED_MARKER`): source recipe + plan.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from .config import SHARD_SIZE

SAVED_MARKER = ".pipequant-bench.json"


def default_root() -> Path:
    env = os.environ.get("PIPEQUANT_BENCH_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pipequant-bench"


def folder_name(size: str) -> str:
    from pipequant.testing import pipeline_name

    return pipeline_name("flux", size)


def source_recipe(folder: Path) -> dict:
    """The recipe a built pipeline's marker records (what a saved copy was made from)."""
    from pipequant.testing import MARKER

    return json.loads((Path(folder) / MARKER).read_text())


def marker_matches(folder: Path, recipe: dict) -> bool:
    try:
        return json.loads((folder / SAVED_MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False


def ensure(size: str, root: Path) -> Path:
    """Build `root/<folder_name(size)>` unless it is there already; return it."""
    from pipequant.testing import ensure_pipeline

    return ensure_pipeline("flux", root, size=size, max_shard_size=SHARD_SIZE[size])


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def saved_name(size: str, plan_key: str) -> str:
    return f"flux-{size}-saved-{plan_key}"


FULL_NAME = "flux-dev-full"  # FLUX.1-dev's own configs, random weights (bench/peak_predicted.py)


def ensure_full(root: Path, device: str) -> Path:
    """FLUX.1-dev as on the hub (configs, shards, bf16) with random weights: the hollow pipeline's
    layout (`pipequant.testing.hollow`), each component then built for real on `device` and saved
    over its sparse files. About 34 GB on disk; on a GPU the random init takes seconds, on a CPU
    minutes and 24 GB of RAM for the transformer alone."""
    from pipequant.testing.hollow import build_flux_dev

    folder = Path(root) / FULL_NAME
    done = folder / ".materialised"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        materialise(build_flux_dev(folder), device)
        done.write_text(device)
    return folder


def materialise(folder: Path, device: str, seed: int = 0) -> Path:
    """Rewrite every model component of a pipeline folder with random weights built from its own
    config on `device`, in the dtype its files hold, one component at a time."""
    import gc

    import diffusers
    import torch
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    for name, entry in index.items():
        sub = folder / name
        if not (isinstance(entry, list) and (sub / "config.json").is_file()):
            continue  # tokenizers, schedulers
        library, class_name = entry
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        dtype = _file_dtype(sub)
        torch.manual_seed(seed)
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device), torch.no_grad():
                if library == "diffusers":
                    model = cls.from_config(cls.load_config(sub))
                else:
                    model = cls(cls.config_class.from_pretrained(sub))
        finally:
            torch.set_default_dtype(old)
        for old_file in [*sub.glob("*.safetensors"), *sub.glob("*.safetensors.index.json")]:
            old_file.unlink()
        kwargs = {"safe_serialization": True} if library == "diffusers" else {}
        model.to(dtype).save_pretrained(str(sub), max_shard_size="5GB", **kwargs)
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return folder


def _file_dtype(component: Path):
    """The dtype most of a component's saved weights are in (from the safetensors headers only)."""
    import torch
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for path in component.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                dtype = part.get_dtype()
                counts[dtype] = counts.get(dtype, 0) + math.prod(part.get_shape())
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    return names.get(max(counts, key=counts.get) if counts else "BF16", torch.bfloat16)
