"""Tiny pipelines of the families ComfyUI users run, as the hub ships them, built offline.

Each family is its real diffusers pipeline class with tiny configs of its real model classes
(the large LLM text encoders included), saved with ``save_pretrained`` into a folder laid out like
the hub snapshot, with ``model_index.json`` naming the tokenizers as the hub names them (Wan's
``T5TokenizerFast``, Z-Image's ``Qwen2Tokenizer``). Every ``nn.Linear`` input is a multiple of
16 (torch's CPU int8 matmul crashes otherwise). :func:`ensure_family` builds each once per folder.

:data:`FAMILIES` says, per family, how the tests sample it (size, steps, frames) and which
components are its denoisers and its largest text encoder.

Test and demo tooling, not part of the resolver: nothing in ``resolver/`` imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .pipelines import MARKER, _clip_config, _t5_config, _write_pipeline, build_flux, build_sd, build_sd3
from .tokenizers import clip_tokenizer, qwen_tokenizer, t5_tokenizer

#: Bump when a builder changes what it writes: ensure_family rebuilds older folders.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Family:
    name: str  # what users call it ("Wan 2.1")
    pipeline_class: str
    build: Callable[[Path], Path]
    denoisers: tuple[str, ...] = ("transformer",)
    text_encoder: str = "text_encoder"  # the largest one: the one a user quantizes
    num_frames: int = 1  # > 1: a video family; the sample is frames x H x W
    size: int = 32
    sample: dict[str, Any] = field(default_factory=dict)  # further arguments of the test's sample

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1


def _hub_names(path: Path, names: dict[str, list[str]]) -> Path:
    """Rename entries of model_index.json to the classes the hub's files name (T5TokenizerFast)."""
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    index.update(names)
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def _qwen3(hidden: int = 32, layers: int = 2):
    from transformers import Qwen3Config, Qwen3Model

    from .tokenizers import QWEN_VOCAB_SIZE

    return Qwen3Model(
        Qwen3Config(
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=hidden // 2,
            vocab_size=QWEN_VOCAB_SIZE,
            max_position_embeddings=512,
        )
    )


# ----------------------------------------------------------------------------- Wan


def _wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _wan_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=128,
        freq_dim=256,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def build_wan(path: Path, two_experts: bool = False) -> Path:
    """Wan 2.1 T2V (``WanPipeline``, UMT5 text encoder); ``two_experts``: Wan 2.2 A14B's layout,
    a high-noise ``transformer`` and a low-noise ``transformer_2`` switched at ``boundary_ratio``."""
    from diffusers import UniPCMultistepScheduler
    from transformers import UMT5EncoderModel

    models = [
        ("text_encoder", lambda: UMT5EncoderModel(_t5_config(128, 2)), 1),
        ("vae", _wan_vae, 2),
        ("transformer", _wan_transformer, 3),
    ]
    if two_experts:
        models.append(("transformer_2", _wan_transformer, 4))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    _write_pipeline(
        path,
        "WanPipeline",
        parts={"scheduler": scheduler, "tokenizer": t5_tokenizer()},
        models=models,
        absent=() if two_experts else ("transformer_2",),
        dtype=torch.bfloat16,
        max_shard_size=None,
        extra={"boundary_ratio": 0.875, "expand_timesteps": False} if two_experts else {"expand_timesteps": False},
    )
    return _hub_names(path, {"tokenizer": ["transformers", "T5TokenizerFast"]})


# ----------------------------------------------------------------------------- Z-Image


def build_z_image(path: Path) -> Path:
    """Z-Image Turbo (``ZImagePipeline``): Qwen3 text encoder, FLUX-style VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

    def transformer():
        model = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=1,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            qk_norm=True,
            cap_feat_dim=32,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 32, 32],
        )
        with torch.no_grad():  # created with torch.empty: NaN on some machines
            model.x_pad_token.fill_(1.0)
            model.cap_pad_token.fill_(1.0)
        return model

    def vae():
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            block_out_channels=[16, 32],
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=16,
            sample_size=32,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )

    _write_pipeline(
        path,
        "ZImagePipeline",
        parts={"scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "tokenizer": qwen_tokenizer()},
        models=[("text_encoder", _qwen3, 1), ("vae", vae, 2), ("transformer", transformer, 3)],
        absent=(),
        dtype=torch.bfloat16,
        max_shard_size=None,
    )
    return _hub_names(path, {"tokenizer": ["transformers", "Qwen2Tokenizer"]})


# ----------------------------------------------------------------------------- the table

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("FLUX.1", "FluxPipeline", build_flux, text_encoder="text_encoder_2", sample={"max_sequence_length": 32}),
        Family(
            "SD3.5",
            "StableDiffusion3Pipeline",
            build_sd3,
            text_encoder="text_encoder_3",
            sample={"max_sequence_length": 32},
        ),
        Family("SD1.5", "StableDiffusionPipeline", build_sd, denoisers=("unet",)),
        Family("Wan 2.1", "WanPipeline", build_wan, num_frames=5, sample={"max_sequence_length": 16}),
        Family(
            "Wan 2.2 A14B",
            "WanPipeline",
            lambda p: build_wan(p, two_experts=True),
            denoisers=("transformer", "transformer_2"),
            num_frames=5,
            sample={"max_sequence_length": 16},
        ),
        Family("Z-Image Turbo", "ZImagePipeline", build_z_image, sample={"max_sequence_length": 32}),
    )
}


def folder_name(family: str) -> str:
    """``tiny-wan-2.1`` for "Wan 2.1"."""
    return "tiny-" + "".join(c if c.isalnum() or c == "." else "-" for c in family.lower()).strip("-")


def ensure_family(family: str, root: str | os.PathLike) -> Path:
    """Build ``root/<folder_name(family)>`` once and return it (a temporary sibling renamed into
    place: a concurrent caller never sees a half-written pipeline)."""
    spec = FAMILIES[family]
    root = Path(root)
    target = root / folder_name(family)
    recipe = {"family": family, "recipe_version": RECIPE_VERSION}
    if _marker_matches(target, recipe):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        spec.build(tmp)
        (tmp / MARKER).write_text(json.dumps(recipe, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _marker_matches(folder: Path, recipe: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False


__all__ = ["FAMILIES", "Family", "ensure_family", "folder_name", "_clip_config", "clip_tokenizer"]
