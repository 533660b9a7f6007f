"""Hollow full-size pipelines: real configs, sparse safetensors (header written, data never).

Inspection, estimates and planning read only config files and safetensors headers, so a folder
whose weight files hold a correct header and are then truncated (sparse) to their full size
behaves exactly like the real pipeline for them: tens of GB on paper, a few MB on disk. The
configs are those of the public FLUX.1-dev, Stable Diffusion 3.5 Large and SDXL base repos; each
builder asserts the parameter counts of the real models (README "Facts").
"""

from __future__ import annotations

import json
import os
import struct
from math import prod
from pathlib import Path
from typing import Any

# Parameter counts of the real models, counted on the meta device (README "Facts").
PARAMS = {
    "flux_transformer": 11_901_408_320,
    "flux_schnell_transformer": 11_891_178_560,  # FLUX.1-dev less its guidance embedder
    "t5_xxl": 4_762_310_656,
    "clip_l": 123_060_480,
    "flux_vae": 83_819_683,
    "sd35_large_transformer": 8_146_280_768,
    "sdxl_unet": 2_567_463_684,
}

SAFETENSORS_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "int64": "I64", "int32": "I32"}
GB = 1000**3

# ----------------------------------------------------------------------------- configs (public repos)

FLUX_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
}
FLUX_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
    "force_upcast": True,
}
SD3_VAE = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
SDXL_VAE = {
    **FLUX_VAE,
    "latent_channels": 4,
    "scaling_factor": 0.13025,
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}
SD35_TRANSFORMER = {
    "_class_name": "SD3Transformer2DModel",
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
    "dual_attention_layers": [],
}
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": [1, 2, 10],
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
}
CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
CLIP_G = {
    **CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
T5_XXL = {
    "architectures": ["T5EncoderModel"],
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "tie_word_embeddings": False,
    "is_encoder_decoder": False,
    "use_cache": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
# FLUX.1-dev's text encoders' config.json as the hub has them (written by transformers 4.43, legacy
# and run-time fields included); the hollow folders hold what transformers 5 writes for CLIP_L and
# T5_XXL. The shipped shape facts cover both (testing/shape_seed.py).
HUB_T5_XXL = {
    "_name_or_path": "google/t5-v1_1-xxl",
    "architectures": ["T5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.3",
    "use_cache": True,
    "vocab_size": 32128,
}
HUB_CLIP_L = {
    "_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.3",
    "vocab_size": 49408,
}
FLOW_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


# ----------------------------------------------------------------------------- meta-device models


def meta_model(library: str, class_name: str, config: dict):
    """The model on the meta device: shapes and names without memory or initialisation."""
    import torch
    from accelerate import init_empty_weights

    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name)
        with init_empty_weights(include_buffers=True):
            return cls.from_config({k: v for k, v in config.items() if k != "_class_name"})
    import transformers

    cls = getattr(transformers, class_name)
    config_cls = cls.config_class
    with torch.device("meta"):
        return cls(config_cls(**{k: v for k, v in config.items() if k != "architectures"}))


def saved_tensors(model) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, torch dtype name, shape) of what save_pretrained writes: the state dict, one entry
    per tied parameter (the first name), no non-persistent buffers."""
    seen, out = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape)))
    return out


def write_sparse_safetensors(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], dtype: str) -> int:
    """A safetensors file with a real header and a sparse data region; returns the data bytes."""
    from pipequant.resolver.files import DTYPE_BYTES

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tdtype, shape in tensors:
        st = SAFETENSORS_DTYPE[dtype if tdtype in ("float32", "bfloat16", "float16") else tdtype]
        n = prod(shape) * DTYPE_BYTES[st]
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)  # sparse: no data block is ever written
    return offset


def _shards(tensors, dtype: str, count: int) -> list[list]:
    """Split into `count` files of about equal size, in state-dict order."""
    sizes = list(_sizes(tensors, dtype))
    total, start = sum(sizes), 0
    groups: list[list] = [[] for _ in range(count)]
    for t, n in zip(tensors, sizes):
        groups[min(count - 1, start * count // max(total, 1))].append(t)
        start += n
    return [g for g in groups if g]


def write_component(
    folder: Path,
    library: str,
    class_name: str,
    config: dict,
    dtype: str,
    *,
    shards: int = 1,
    variant: str | None = None,
    expect_params: int | None = None,
    write_config: bool = True,
) -> int:
    """Write one component: its config and sparse weight file(s), sharded into `shards` files
    named as on the hub (with a `.index.json`). Returns the parameter count."""
    folder.mkdir(parents=True, exist_ok=True)
    model = meta_model(library, class_name, config)
    tensors = saved_tensors(model)
    params = sum(prod(t[2]) for t in tensors)  # parameters and persistent buffers (SD3's pos_embed)
    if expect_params is not None and params != expect_params:
        raise AssertionError(f"{class_name}: {params:,} parameters, the real model has {expect_params:,}")
    if write_config:
        if library == "diffusers":
            (folder / "config.json").write_text(json.dumps({"_diffusers_version": "0.42.1", **config}, indent=1))
        else:
            cfg = model.config.to_dict()
            cfg["torch_dtype"] = dtype
            (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    stem = "diffusion_pytorch_model" if library == "diffusers" else "model"
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    total_bytes = sum(_sizes(tensors, dtype))
    groups = _shards(tensors, dtype, shards)
    if len(groups) == 1:
        write_sparse_safetensors(folder / f"{stem}{suffix}", tensors, dtype)
    else:
        weight_map = {}
        for i, group in enumerate(groups, 1):
            name = f"{stem}-{i:05d}-of-{len(groups):05d}{suffix}"
            write_sparse_safetensors(folder / name, group, dtype)
            weight_map.update({t[0]: name for t in group})
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (folder / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=1))
    return params


def _sizes(tensors, dtype):
    from pipequant.resolver.files import DTYPE_BYTES

    for _, tdtype, shape in tensors:
        st = SAFETENSORS_DTYPE[dtype if tdtype in ("float32", "bfloat16", "float16") else tdtype]
        yield prod(shape) * DTYPE_BYTES[st]


def _tokenizers():
    from .tokenizers import clip_tokenizer, t5_tokenizer

    return clip_tokenizer, t5_tokenizer


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _pipeline(root: Path, pipeline_class: str, parts: dict[str, tuple], dtype: str) -> Path:
    """parts: name -> (library, class, config, {write_component kwargs}) or a tokenizer/scheduler."""
    clip_tokenizer, t5_tokenizer = _tokenizers()
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1"}
    for name, part in parts.items():
        kind = part[0]
        if kind == "clip_tokenizer":
            clip_tokenizer().save_pretrained(root / name)
            index[name] = ["transformers", "CLIPTokenizer"]
        elif kind == "t5_tokenizer":
            t5_tokenizer().save_pretrained(root / name)
            index[name] = ["transformers", "T5TokenizerFast"]
        elif kind == "scheduler":
            _write_json(root / name / "scheduler_config.json", part[1])
            index[name] = ["diffusers", part[1]["_class_name"]]
        else:
            library, class_name, config, kwargs = part
            kwargs = dict(kwargs)
            variants = kwargs.pop("variants", {})
            write_component(root / name, library, class_name, config, kwargs.pop("dtype", dtype), **kwargs)
            for variant, vdtype in variants.items():
                write_component(root / name, library, class_name, config, vdtype, variant=variant, write_config=False)
            index[name] = [library, class_name]
    _write_json(root / "model_index.json", index)
    return root


def build_flux_dev(root: str | os.PathLike, transformer: dict = FLUX_TRANSFORMER, params: int | None = None) -> Path:
    """FLUX.1-dev as on the hub: bf16, transformer in 3 shards, T5-XXL in 2."""
    return _pipeline(
        Path(root),
        "FluxPipeline",
        {
            "transformer": (
                "diffusers",
                "FluxTransformer2DModel",
                transformer,
                {"shards": 3, "expect_params": params or PARAMS["flux_transformer"]},
            ),
            "text_encoder": ("transformers", "CLIPTextModel", CLIP_L, {"expect_params": PARAMS["clip_l"]}),
            "text_encoder_2": (
                "transformers",
                "T5EncoderModel",
                T5_XXL,
                {"shards": 2, "expect_params": PARAMS["t5_xxl"]},
            ),
            "vae": ("diffusers", "AutoencoderKL", FLUX_VAE, {"expect_params": PARAMS["flux_vae"]}),
            "tokenizer": ("clip_tokenizer",),
            "tokenizer_2": ("t5_tokenizer",),
            "scheduler": ("scheduler", FLOW_SCHEDULER),
        },
        "bfloat16",
    )


def build_flux_schnell(root: str | os.PathLike) -> Path:
    """FLUX.1-schnell: FLUX.1-dev's pipeline without the guidance embedder (guidance-distilled away)."""
    return build_flux_dev(root, FLUX_TRANSFORMER | {"guidance_embeds": False}, PARAMS["flux_schnell_transformer"])


def build_sd35_large(root: str | os.PathLike) -> Path:
    """Stable Diffusion 3.5 Large: transformer in 2 shards, CLIP-L, CLIP-G, T5-XXL (2 shards), bf16."""
    return _pipeline(
        Path(root),
        "StableDiffusion3Pipeline",
        {
            "transformer": (
                "diffusers",
                "SD3Transformer2DModel",
                SD35_TRANSFORMER,
                {"shards": 2, "expect_params": PARAMS["sd35_large_transformer"]},
            ),
            "text_encoder": (
                "transformers",
                "CLIPTextModelWithProjection",
                {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"]},
                {},
            ),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G, {}),
            "text_encoder_3": (
                "transformers",
                "T5EncoderModel",
                T5_XXL,
                {"shards": 2, "expect_params": PARAMS["t5_xxl"]},
            ),
            "vae": ("diffusers", "AutoencoderKL", SD3_VAE, {"expect_params": PARAMS["flux_vae"]}),
            "tokenizer": ("clip_tokenizer",),
            "tokenizer_2": ("clip_tokenizer",),
            "tokenizer_3": ("t5_tokenizer",),
            "scheduler": ("scheduler", {**FLOW_SCHEDULER, "use_dynamic_shifting": False}),
        },
        "bfloat16",
    )


def build_sdxl(root: str | os.PathLike) -> Path:
    """SDXL base: fp32 files plus the `fp16` variant files beside them, as on the hub."""
    fp16 = {"variants": {"fp16": "float16"}}
    return _pipeline(
        Path(root),
        "StableDiffusionXLPipeline",
        {
            "unet": ("diffusers", "UNet2DConditionModel", SDXL_UNET, {**fp16, "expect_params": PARAMS["sdxl_unet"]}),
            "text_encoder": ("transformers", "CLIPTextModel", CLIP_L, {**fp16, "expect_params": PARAMS["clip_l"]}),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G, fp16),
            "vae": ("diffusers", "AutoencoderKL", SDXL_VAE, fp16),
            "tokenizer": ("clip_tokenizer",),
            "tokenizer_2": ("clip_tokenizer",),
            "scheduler": ("scheduler", SDXL_SCHEDULER),
        },
        "float32",
    )


BUILDERS = {
    "flux-dev": build_flux_dev,
    "flux-schnell": build_flux_schnell,
    "sd35-large": build_sd35_large,
    "sdxl": build_sdxl,
}


def ensure_hollow(kind: str, root: str | os.PathLike) -> Path:
    """Build (once) the hollow pipeline `kind` under `root`; returns its folder."""
    folder = Path(root) / f"hollow-{kind}"
    if not (folder / "model_index.json").exists():
        BUILDERS[kind](folder)
    return folder


def disk_usage(folder: Path) -> int:
    """Bytes really allocated on disk (sparse regions excluded)."""
    return sum(p.stat().st_blocks * 512 for p in Path(folder).rglob("*") if p.is_file())
