"""Write a saved diffusers component as a GGUF file of the kind ``from_single_file`` loads.

The tensors keep the model's own (diffusers) state-dict names, so diffusers' single-file loader
skips conversion and the file loads at any model size. Like real FLUX GGUF files (city96's
convert.py + llama.cpp patch), 1-D and tiny tensors stay F32 and FLUX's input/output layers stay
F32/F16 when quantizing.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

# Tensors real FLUX GGUF files (city96's convert.py + llama.cpp patch) keep in high precision
# when quantizing, by original (BFL) name fragment. Everything 1-D or with <= 1024 values is F32.
_FLUX_KEEP_F32 = ("img_in.", "time_in.in_layer.", "vector_in.in_layer.", "guidance_in.in_layer.", "final_layer.linear.")
_FLUX_KEEP_F16 = ("txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
_SMALL = 1024


def _flux_bfl_name(diffusers_name: str) -> str | None:
    """Original BFL name of a *non-block* diffusers FLUX tensor (None for block tensors)."""
    prefixes = {
        "time_text_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
        "time_text_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
        "time_text_embed.text_embedder.linear_1.": "vector_in.in_layer.",
        "time_text_embed.text_embedder.linear_2.": "vector_in.out_layer.",
        "time_text_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
        "time_text_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
        "context_embedder.": "txt_in.",
        "x_embedder.": "img_in.",
        "proj_out.": "final_layer.linear.",
        "norm_out.linear.": "final_layer.adaLN_modulation.1.",
    }
    for src, dst in prefixes.items():
        if diffusers_name.startswith(src):
            return dst + diffusers_name[len(src) :]
    return None


def _component_files(folder: Path) -> list[Path]:
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        return [folder / f for f in dict.fromkeys(weight_map.values())]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    return files


def write_gguf(
    pipeline_dir: str | os.PathLike,
    component: str,
    out_file: str | os.PathLike,
    qtype: str = "Q8_0",
) -> Path:
    """Write ``pipeline_dir/component``'s weights as a GGUF file and return its path.

    ``qtype``: ``"Q8_0"``, ``"Q4_0"`` or ``"BF16"`` (what the ``gguf`` package can write).
    Like real FLUX GGUF files, 1-D tensors (biases, norm scales) and tensors of <= 1024 values stay
    F32; when quantizing, FLUX's input/output layers (img_in, time_in, vector_in, guidance_in,
    final_layer) stay F32/F16 as in city96's files. Only 2-D tensors whose rows divide into
    quantization blocks are quantized; other tensors (convs, odd widths) stay F32.
    Load with ``<ModelClass>.from_single_file(out_file, quantization_config=GGUFQuantizationConfig(
    compute_dtype=torch.bfloat16), config=pipeline_dir, subfolder=component)``. The file is written
    tensor by tensor: memory holds one tensor at a time.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    qtypes = {
        "Q8_0": gguf.GGMLQuantizationType.Q8_0,
        "Q4_0": gguf.GGMLQuantizationType.Q4_0,
        "BF16": gguf.GGMLQuantizationType.BF16,
    }
    try:
        target = qtypes[qtype.upper()]
    except KeyError:
        raise ValueError(
            f"qtype must be one of {sorted(qtypes)} (gguf from PyPI cannot write K-quants), got {qtype!r}"
        ) from None

    folder = Path(pipeline_dir) / component
    config = json.loads((folder / "config.json").read_text())
    class_name = config.get("_class_name", "")
    if "_diffusers_version" not in config:
        raise ValueError(f"{folder} is not a diffusers model (GGUF single-file loading needs one)")
    is_flux = class_name == "FluxTransformer2DModel"
    F32, F16, BF16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16
    quantizing = target not in (F32, F16, BF16)
    block_size = gguf.GGML_QUANT_SIZES[target][0]

    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in _component_files(folder)]
        where: dict[str, Any] = {}
        for h in handles:
            for k in h.keys():
                where[k] = h
        keys = list(where)

        def choose(name: str, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
            if len(shape) <= 1 or _numel(shape) <= _SMALL:
                return F32
            if len(shape) != 2:  # convs, embeddings tables of other ranks: diffusers only wraps Linear
                return F32
            if quantizing and is_flux:
                bfl = _flux_bfl_name(name) or ""
                if any(f in bfl for f in _FLUX_KEEP_F32):
                    return F32
                if any(f in bfl for f in _FLUX_KEEP_F16):
                    return F16
            if shape[-1] % block_size:
                return F32
            return target

        writer = gguf.GGUFWriter(path=None, arch=_gguf_arch(class_name))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type(
            {
                "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                "BF16": gguf.LlamaFileType.MOSTLY_BF16,
            }[target.name]
        )
        writer.add_string("pipequant.source_class", class_name)

        # Pass 1: tensor infos from the safetensors headers (nothing loaded).
        infos: list[tuple[str, gguf.GGMLQuantizationType]] = []
        for name in keys:
            shape = tuple(where[name].get_slice(name).get_shape())
            qt = choose(name, shape)
            if qt == F32:
                writer.add_tensor_info(name, shape, np.dtype(np.float32), _numel(shape) * 4, raw_dtype=F32)
            elif qt == F16:
                writer.add_tensor_info(name, shape, np.dtype(np.float16), _numel(shape) * 2, raw_dtype=F16)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qt)
                writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), _numel(byte_shape), raw_dtype=qt)
            infos.append((name, qt))

        out_file = Path(out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_file.with_name(out_file.name + f".tmp-{os.getpid()}")
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            # Pass 2: data, one tensor at a time.
            for name, qt in infos:
                writer.write_tensor_data(_encode(where[name].get_tensor(name), qt, gguf, np))
            writer.close()
            os.replace(tmp, out_file)
        finally:
            writer.close()
            if tmp.exists():
                tmp.unlink()
    return out_file


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _encode(t: torch.Tensor, qt, gguf, np):
    F32, F16, BF16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16
    t = t.detach().contiguous()
    if qt == F32:
        return t.to(torch.float32).numpy()
    if qt == F16:
        return t.to(torch.float16).numpy()
    if qt == BF16:  # exact bits, no numpy rounding pass
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
    return gguf.quants.quantize(t.to(torch.float32).numpy(), qt)


def _gguf_arch(class_name: str) -> str:
    return {
        "FluxTransformer2DModel": "flux",
        "SD3Transformer2DModel": "sd3",
        "UNet2DConditionModel": "sd1",
    }.get(class_name, class_name.lower() or "unknown")
