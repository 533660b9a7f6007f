"""Tiny random LoRA files for the tiny pipelines (tests and bench): diffusers/peft and kohya layouts.

Layer shapes come from each component's config, built on the meta device: no weight is read.
"""

from __future__ import annotations

import json
from pathlib import Path

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def linear_shapes(pipeline_dir: Path, component: str) -> dict[str, tuple[int, int]]:
    """{module name: (out_features, in_features)} of every nn.Linear in one component."""
    import diffusers
    import torch
    import transformers

    folder = Path(pipeline_dir) / component
    library, class_name = json.loads((Path(pipeline_dir) / "model_index.json").read_text())[component]
    cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
    with torch.device("meta"):
        if library == "diffusers":
            model = cls.from_config(cls.load_config(folder))
        else:
            model = cls(transformers.AutoConfig.from_pretrained(folder))
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _pick(shapes: dict, leaves: tuple[str, ...]) -> dict:
    return {n: s for n, s in shapes.items() if any(n == leaf or n.endswith("." + leaf) for leaf in leaves)}


def write_peft_lora(
    pipeline_dir: Path,
    out: Path,
    *,
    component: str = "transformer",
    rank: int = 4,
    scale: float = 0.5,
    seed: int = 0,
    leaves: tuple[str, ...] = ATTENTION,
    text_encoder: str | None = None,
) -> Path:
    """diffusers/peft layout: "<component>.<module>.lora_A.weight" / "lora_B.weight"."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    parts = [(component, leaves)] + ([(text_encoder, TEXT_ATTENTION)] if text_encoder else [])
    for name, wanted in parts:
        for module, (fan_out, fan_in) in _pick(linear_shapes(pipeline_dir, name), wanted).items():
            tensors[f"{name}.{module}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) * scale
            tensors[f"{name}.{module}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * scale
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def write_kohya_lora(
    pipeline_dir: Path, out: Path, *, rank: int = 4, scale: float = 0.5, seed: int = 0, alpha: float | None = None
) -> Path:
    """kohya/sd-scripts layout ("lora_unet_….lora_down.weight", ".lora_up.weight", ".alpha") for a
    FLUX pipeline (original BFL block names, fused qkv) or a UNet pipeline (diffusers names, "_"-joined)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    index = json.loads((Path(pipeline_dir) / "model_index.json").read_text())
    layers: dict[str, tuple[int, int]] = {}
    if "unet" in index:
        for module, shape in _pick(linear_shapes(pipeline_dir, "unet"), ATTENTION).items():
            layers["lora_unet_" + module.replace(".", "_")] = shape
    else:
        shapes = linear_shapes(pipeline_dir, "transformer")
        blocks = sorted({int(n.split(".")[1]) for n in shapes if n.startswith("transformer_blocks.")})
        for i in blocks:
            width = shapes[f"transformer_blocks.{i}.attn.to_q"][1]
            layers[f"lora_unet_double_blocks_{i}_img_attn_qkv"] = (3 * width, width)
            layers[f"lora_unet_double_blocks_{i}_img_attn_proj"] = shapes[f"transformer_blocks.{i}.attn.to_out.0"]
    tensors = {}
    for key, (fan_out, fan_in) in layers.items():
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def write_wan_comfy_lora(
    pipeline_dir: Path, out: Path, *, rank: int = 4, scale: float = 0.5, seed: int = 0, alpha: float | None = None
) -> Path:
    """A Wan LoRA in the layout ComfyUI users share (original Wan names: "diffusion_model.blocks.<i>.
    self_attn.q.lora_down.weight", ".lora_up.weight", ".alpha"), for the pipeline's `transformer`.
    The layout names no expert: a Wan 2.2 file says high or low noise by its name only."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(pipeline_dir, "transformer")
    tensors = {}
    for module, (fan_out, fan_in) in _pick(shapes, ATTENTION).items():
        if ".attn1." not in module:
            continue
        block, leaf = module.split(".attn1.")
        original = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}[leaf]
        key = f"diffusion_model.{block}.self_attn.{original}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


EXAMPLE_LORA = "example_flux_lora.safetensors"  # the names the LoRA + image-to-image template uses
EXAMPLE_IMAGE = "example.png"


def write_example_files(flux_dir: Path, loras: Path, inputs: Path) -> None:
    """The LoRA and input image `example_workflows/FLUX LoRA image-to-image.json` names, for a tiny FLUX."""
    import numpy as np
    from PIL import Image

    if not (Path(loras) / EXAMPLE_LORA).is_file():
        write_peft_lora(flux_dir, Path(loras) / EXAMPLE_LORA, text_encoder="text_encoder")
    Path(inputs).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    pixels = np.stack([yy, xx, 0.5 + 0.4 * np.sin(6 * xx)], -1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(Path(inputs) / EXAMPLE_IMAGE)
