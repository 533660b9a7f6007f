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
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .pipelines import MARKER, _clip_config, _t5_config, _vae, _write_pipeline, build_flux, build_sd, build_sd3
from .tokenizers import clip_tokenizer, gemma_tokenizer, llama_tokenizer, qwen_tokenizer, t5_tokenizer

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
    requires: tuple[str, ...] = ()  # modules the family's own classes import (PixtralProcessor: torchvision)

    def missing(self) -> dict[str, str]:
        """{module: why} for each required module this environment cannot import. A module that is
        installed but fails to import counts too (a CUDA torchvision build against a CPU torch)."""
        import importlib

        out = {}
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing native library
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                out[module] = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return out

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
    from transformers import UMT5Config, UMT5EncoderModel

    models = [
        ("text_encoder", lambda: UMT5EncoderModel(UMT5Config(**_t5_config(128, 2).to_diff_dict())), 1),
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


# ----------------------------------------------------------------------------- T5-only families


def _t5_family(
    path: Path, pipeline_class: str, transformer, vae, scheduler=None, tokenizer_name: str = "T5TokenizerFast", te=None
) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import T5EncoderModel

    _write_pipeline(
        path,
        pipeline_class,
        parts={"scheduler": scheduler or FlowMatchEulerDiscreteScheduler(), "tokenizer": t5_tokenizer()},
        models=[
            ("text_encoder", te or (lambda: T5EncoderModel(_t5_config(128, 2))), 1),
            ("vae", vae, 2),
            ("transformer", transformer, 3),
        ],
        absent=(),
        dtype=torch.bfloat16,
        max_shard_size=None,
    )
    return _hub_names(path, {"tokenizer": ["transformers", tokenizer_name]})


def build_chroma(path: Path) -> Path:
    """Chroma (``ChromaPipeline``): FLUX-shaped, T5 only, a distilled modulation approximator."""
    from diffusers import ChromaTransformer2DModel

    def transformer():
        return ChromaTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=64,
            num_attention_heads=2,
            joint_attention_dim=128,
            axes_dims_rope=(16, 24, 24),
            approximator_hidden_dim=64,
            approximator_layers=1,
            approximator_num_channels=64,
        )

    path = _t5_family(path, "ChromaPipeline", transformer, lambda: _vae(16, 0.3611, 0.1159))
    index = json.loads((path / "model_index.json").read_text())
    index.update({"image_encoder": [None, None], "feature_extractor": [None, None]})
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def build_ltx(path: Path) -> Path:
    """LTX-Video (``LTXPipeline``): T5, a causal video VAE folding 4 frames (here) into one."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

    def transformer():
        return LTXVideoTransformer3DModel(
            in_channels=16,
            out_channels=16,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=16,
            cross_attention_dim=32,
            num_layers=1,
            caption_channels=128,
        )

    def vae():
        return AutoencoderKLLTXVideo(
            latent_channels=16,
            block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            patch_size=1,
            patch_size_t=1,
        )

    return _t5_family(path, "LTXPipeline", transformer, vae)


def build_pixart_sigma(path: Path) -> Path:
    """PixArt-Sigma (``PixArtSigmaPipeline``): T5, DiT with a fixed sin-cos position buffer."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

    def transformer():
        return PixArtTransformer2DModel(
            sample_size=32,
            num_layers=1,
            patch_size=2,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_channels=128,
            in_channels=4,
            cross_attention_dim=32,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=None,
        )

    def vae():  # 8x, as PixArt's resolution binning renders its 256-pixel bins
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=256,
        )

    return _t5_family(path, "PixArtSigmaPipeline", transformer, vae, DPMSolverMultistepScheduler(), "T5Tokenizer")


def build_aura_flow(path: Path) -> Path:
    """AuraFlow (``AuraFlowPipeline``): UMT5, a learned position table of ``pos_embed_max_size``."""
    from diffusers import AuraFlowTransformer2DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def transformer():
        return AuraFlowTransformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            num_mmdit_layers=1,
            num_single_dit_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_projection_dim=32,
            joint_attention_dim=128,
            out_channels=4,
            pos_embed_max_size=256,
        )

    def te():
        return UMT5EncoderModel(UMT5Config(**_t5_config(128, 2).to_diff_dict()))

    return _t5_family(path, "AuraFlowPipeline", transformer, lambda: _vae(4, 0.13025, None), te=te)


# ----------------------------------------------------------------------------- SDXL


def build_sdxl(path: Path) -> Path:
    """SDXL (``StableDiffusionXLPipeline``): two CLIP encoders, UNet with size conditioning."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def unet():
        return UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=16,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=16 * 6 + 32,
            norm_num_groups=16,
        )

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    _write_pipeline(
        path,
        "StableDiffusionXLPipeline",
        parts={"scheduler": scheduler, "tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer()},
        models=[
            ("text_encoder", lambda: CLIPTextModel(_clip_config(32, 2)), 1),
            ("text_encoder_2", lambda: CLIPTextModelWithProjection(_clip_config(32, 2)), 2),
            ("vae", lambda: _vae(4, 0.13025, None), 3),
            ("unet", unet, 4),
        ],
        absent=("image_encoder", "feature_extractor"),
        extra={"force_zeros_for_empty_prompt": True},
        dtype=torch.bfloat16,
        max_shard_size=None,
    )
    return path


# ----------------------------------------------------------------------------- LLM text encoders


def _qwen25_vl(hidden: int = 32):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .tokenizers import QWEN_SPECIAL, QWEN_VOCAB_SIZE

    ids = {t: 256 + i for i, t in enumerate(QWEN_SPECIAL)}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": QWEN_VOCAB_SIZE,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": hidden,
        },
        hidden_size=hidden,
        vocab_size=QWEN_VOCAB_SIZE,
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|image_pad|>"],
        image_token_id=ids["<|image_pad|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _gemma2(hidden: int = 32):
    from transformers import Gemma2Config, Gemma2Model

    from .tokenizers import SPM_VOCAB_SIZE

    return Gemma2Model(
        Gemma2Config(
            head_dim=16,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_attention_heads=2,
            num_hidden_layers=2,
            num_key_value_heads=2,
            vocab_size=SPM_VOCAB_SIZE,
            max_position_embeddings=1024,
            sliding_window=64,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
    )


def _vae8(latent_channels: int, scaling_factor: float, shift_factor: float | None):
    """An 8x AutoencoderKL (4 blocks of 16 channels): for pipelines that assume a scale factor of 8."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=256,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=shift_factor is None,
        use_post_quant_conv=shift_factor is None,
    )


def _simple(path: Path, pipeline_class: str, parts: dict, models: list, names: dict | None = None) -> Path:
    _write_pipeline(
        path, pipeline_class, parts=parts, models=models, absent=(), dtype=torch.bfloat16, max_shard_size=None
    )
    return _hub_names(path, names or {})


def build_hunyuan_video(path: Path) -> Path:
    """HunyuanVideo (``HunyuanVideoPipeline``): LLaMA + CLIP text encoders, a 4x temporal VAE."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextModel, LlamaConfig, LlamaModel

    from .tokenizers import SPM_VOCAB_SIZE

    def transformer():
        return HunyuanVideoTransformer3DModel(
            in_channels=16,
            out_channels=16,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=32,
            pooled_projection_dim=32,
            rope_axes_dim=(4, 6, 6),
        )

    def vae():
        return AutoencoderKLHunyuanVideo(
            latent_channels=16,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(16, 16, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
        )

    def llama():
        return LlamaModel(
            LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                num_key_value_heads=2,
                num_hidden_layers=2,
                vocab_size=SPM_VOCAB_SIZE,
                max_position_embeddings=1024,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=2,
            )
        )

    return _simple(
        path,
        "HunyuanVideoPipeline",
        {
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
            "tokenizer": llama_tokenizer(),
            "tokenizer_2": clip_tokenizer(),
        },
        [
            ("text_encoder", llama, 1),
            ("text_encoder_2", lambda: CLIPTextModel(_clip_config(32, 2)), 2),
            ("vae", vae, 3),
            ("transformer", transformer, 4),
        ],
        {"tokenizer": ["transformers", "LlamaTokenizerFast"]},
    )


def build_qwen_image(path: Path) -> Path:
    """Qwen-Image (``QwenImagePipeline``): Qwen2.5-VL text encoder, Wan-style image VAE."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    def transformer():
        return QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        )

    def vae():
        return AutoencoderKLQwenImage(
            base_dim=16,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        )

    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, use_dynamic_shifting=True
    )
    return _simple(
        path,
        "QwenImagePipeline",
        {"scheduler": scheduler, "tokenizer": qwen_tokenizer()},
        [("text_encoder", _qwen25_vl, 1), ("vae", vae, 2), ("transformer", transformer, 3)],
        {"tokenizer": ["transformers", "Qwen2Tokenizer"]},
    )


def build_cogview4(path: Path) -> Path:
    """CogView4 (``CogView4Pipeline``): GLM-4 text encoder, its tokenizer as a plain fast tokenizer."""
    from diffusers import CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    from .tokenizers import QWEN_VOCAB_SIZE

    def transformer():
        return CogView4Transformer2DModel(
            patch_size=2,
            in_channels=16,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            out_channels=16,
            text_embed_dim=32,
            time_embed_dim=32,
            condition_dim=16,
        )

    def glm():
        return GlmModel(
            GlmConfig(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                vocab_size=QWEN_VOCAB_SIZE,
                pad_token_id=256,
            )
        )

    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    return _simple(
        path,
        "CogView4Pipeline",
        {"scheduler": scheduler, "tokenizer": qwen_tokenizer()},
        [("text_encoder", glm, 1), ("vae", lambda: _vae(16, 1.0, None), 2), ("transformer", transformer, 3)],
        {"tokenizer": ["transformers", "PreTrainedTokenizerFast"]},
    )


def build_sana(path: Path) -> Path:
    """Sana (``SanaPipeline``): Gemma 2 text encoder, deep-compression autoencoder (DC-AE)."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel

    def transformer():
        return SanaTransformer2DModel(
            patch_size=1,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            num_attention_heads=2,
            attention_head_dim=16,
            num_cross_attention_heads=2,
            cross_attention_head_dim=16,
            cross_attention_dim=32,
            caption_channels=32,
            sample_size=16,  # the 512-pixel bins
        )

    def vae():
        # 32x (six blocks), as Sana's: its resolution binning renders at least 512 pixels a side.
        return AutoencoderDC(
            in_channels=3,
            latent_channels=16,
            attention_head_dim=8,
            encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
            decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
            encoder_block_out_channels=(16,) * 6,
            decoder_block_out_channels=(16,) * 6,
            encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
            decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
            encoder_layers_per_block=(1,) * 6,
            decoder_layers_per_block=[1] * 6,
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        )

    scheduler = DPMSolverMultistepScheduler(
        flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type="dpmsolver++"
    )
    return _simple(
        path,
        "SanaPipeline",
        {"scheduler": scheduler, "tokenizer": gemma_tokenizer()},
        [("text_encoder", _gemma2, 1), ("vae", vae, 2), ("transformer", transformer, 3)],
        {"tokenizer": ["transformers", "GemmaTokenizerFast"]},
    )


def build_lumina2(path: Path) -> Path:
    """Lumina Image 2.0 (``Lumina2Pipeline``): Gemma 2 text encoder, FLUX-style VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Transformer2DModel

    def transformer():
        return Lumina2Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            hidden_size=32,
            num_layers=1,
            num_refiner_layers=1,
            num_attention_heads=2,
            num_kv_heads=2,
            multiple_of=16,
            axes_dim_rope=[8, 4, 4],
            axes_lens=[256, 64, 64],
            cap_feat_dim=32,
        )

    return _simple(
        path,
        "Lumina2Pipeline",
        {"scheduler": FlowMatchEulerDiscreteScheduler(), "tokenizer": gemma_tokenizer()},
        [("text_encoder", _gemma2, 1), ("vae", lambda: _vae8(16, 0.3611, 0.1159), 2), ("transformer", transformer, 3)],
        {"tokenizer": ["transformers", "GemmaTokenizerFast"]},
    )


def build_flux2_klein(path: Path) -> Path:
    """FLUX.2 [klein] (``Flux2KleinPipeline``): Qwen3 text encoder, FLUX.2's 32-channel VAE."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .tokenizers import QWEN_VOCAB_SIZE

    def transformer():
        return Flux2Transformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=96,  # the text encoder's three hidden-state layers, concatenated
            timestep_guidance_channels=256,
            axes_dims_rope=[8, 8, 8, 8],
            guidance_embeds=False,
        )

    def qwen3():
        return Qwen3ForCausalLM(
            Qwen3Config(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=27,  # the pipeline reads hidden states 9, 18 and 27
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                vocab_size=QWEN_VOCAB_SIZE,
                max_position_embeddings=1024,
            )
        )

    def vae():
        return AutoencoderKLFlux2(
            sample_size=32,
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            block_out_channels=(16,),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )

    return _simple(
        path,
        "Flux2KleinPipeline",
        {"scheduler": FlowMatchEulerDiscreteScheduler(), "tokenizer": qwen_tokenizer()},
        [("text_encoder", qwen3, 1), ("vae", vae, 2), ("transformer", transformer, 3)],
        {"tokenizer": ["transformers", "Qwen2TokenizerFast"]},
    )


def _llama_causal(hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from .tokenizers import SPM_VOCAB_SIZE

    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_hidden_layers=layers,
            vocab_size=SPM_VOCAB_SIZE,
            max_position_embeddings=1024,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=False,
        )
    )


def build_hidream(path: Path) -> Path:
    """HiDream-I1 (``HiDreamImagePipeline``): two CLIP-G/L, T5 and Llama 3.1 text encoders, a
    mixture-of-experts transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImageTransformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    def transformer():
        return HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_channels=[128, 32],
            text_emb_dim=64,
            num_routed_experts=4,
            num_activated_experts=2,
            axes_dims_rope=(8, 4, 4),
            max_resolution=(128, 128),
            llama_layers=(0, 1),
        )

    return _simple(
        path,
        "HiDreamImagePipeline",
        {
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
            "tokenizer": clip_tokenizer(128),
            "tokenizer_2": clip_tokenizer(128),
            "tokenizer_3": t5_tokenizer(),
            "tokenizer_4": llama_tokenizer(),
        },
        [
            ("text_encoder", lambda: CLIPTextModelWithProjection(_clip_config(32, 2, max_positions=128)), 1),
            ("text_encoder_2", lambda: CLIPTextModelWithProjection(_clip_config(32, 2, max_positions=128)), 2),
            ("text_encoder_3", lambda: T5EncoderModel(_t5_config(128, 2)), 3),
            ("text_encoder_4", _llama_causal, 4),
            ("vae", lambda: _vae8(16, 0.3611, 0.1159), 5),
            ("transformer", transformer, 6),
        ],
        {"tokenizer_3": ["transformers", "T5Tokenizer"], "tokenizer_4": ["transformers", "PreTrainedTokenizerFast"]},
    )


def build_hunyuan_image(path: Path) -> Path:
    """HunyuanImage 2.1 (``HunyuanImagePipeline``): Qwen2.5-VL and ByT5 (glyph) text encoders,
    two guiders saved as components."""
    from diffusers import (
        AdaptiveProjectedMixGuidance,
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImageTransformer2DModel,
    )
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    def transformer():
        return HunyuanImageTransformer2DModel(
            in_channels=16,
            out_channels=16,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=(1, 1),
            guidance_embeds=False,
            text_embed_dim=32,
            text_embed_2_dim=32,
            rope_axes_dim=(8, 8),
        )

    def vae():
        return AutoencoderKLHunyuanImage(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=(32, 32, 32, 32),  # the last a multiple of 2 x latent_channels
            layers_per_block=1,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            sample_size=128,
        )

    def byt5():
        return T5EncoderModel(
            T5Config(
                d_model=32,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                vocab_size=384,  # ByT5: 256 bytes + 3 specials + 125 extra ids
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                use_cache=False,
                tie_word_embeddings=False,
            )
        )

    return _simple(
        path,
        "HunyuanImagePipeline",
        {
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
            "tokenizer": qwen_tokenizer(),
            "tokenizer_2": ByT5Tokenizer(),
            "guider": AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=2),
            "ocr_guider": AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=3),
        },
        [
            ("text_encoder", _qwen25_vl, 1),
            ("text_encoder_2", byt5, 2),
            ("vae", vae, 3),
            ("transformer", transformer, 4),
        ],
        {"tokenizer": ["transformers", "Qwen2Tokenizer"]},
    )


def build_flux2_dev(path: Path) -> Path:
    """FLUX.2 [dev] (``Flux2Pipeline``): Mistral Small 3 (with its Pixtral vision tower) as text
    encoder, a PixtralProcessor in the ``tokenizer`` slot."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from .tokenizers import SPM_VOCAB_SIZE, pixtral_processor

    def transformer():
        return Flux2Transformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=96,  # hidden states 10, 20 and 30 of the text encoder, concatenated
            timestep_guidance_channels=256,
            axes_dims_rope=[8, 8, 8, 8],
            guidance_embeds=True,
        )

    def mistral():
        config = Mistral3Config(
            text_config={
                "model_type": "mistral",
                "vocab_size": SPM_VOCAB_SIZE,
                "hidden_size": 32,
                "intermediate_size": 64,
                "max_position_embeddings": 1024,
                "num_attention_heads": 2,
                "num_hidden_layers": 30,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "sliding_window": None,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 6,
            },
            vision_config={
                "model_type": "pixtral",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "head_dim": 16,
                "intermediate_size": 32,
                "image_size": 64,
                "patch_size": 16,
                "num_channels": 3,
            },
            spatial_merge_size=2,
            image_token_index=3,
            vision_feature_layer=-1,
        )
        return Mistral3ForConditionalGeneration(config)

    def vae():
        from diffusers import AutoencoderKLFlux2

        return AutoencoderKLFlux2(
            sample_size=32,
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            block_out_channels=(16,),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )

    return _simple(
        path,
        "Flux2Pipeline",
        {"scheduler": FlowMatchEulerDiscreteScheduler(), "tokenizer": pixtral_processor()},
        [("text_encoder", mistral, 1), ("vae", vae, 2), ("transformer", transformer, 3)],
    )


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
        Family("SDXL", "StableDiffusionXLPipeline", build_sdxl, denoisers=("unet",), text_encoder="text_encoder_2"),
        Family("PixArt-Sigma", "PixArtSigmaPipeline", build_pixart_sigma, sample={"max_sequence_length": 32}),
        Family("Chroma", "ChromaPipeline", build_chroma, sample={"max_sequence_length": 32}),
        Family("AuraFlow", "AuraFlowPipeline", build_aura_flow, sample={"max_sequence_length": 32}),
        Family("LTX-Video", "LTXPipeline", build_ltx, num_frames=9, sample={"max_sequence_length": 32}),
        Family(
            "HunyuanVideo",
            "HunyuanVideoPipeline",
            build_hunyuan_video,
            num_frames=5,
            sample={"max_sequence_length": 32},
        ),
        Family("Qwen-Image", "QwenImagePipeline", build_qwen_image, sample={"max_sequence_length": 32}),
        Family("CogView4", "CogView4Pipeline", build_cogview4, sample={"max_sequence_length": 32}),
        Family("Sana", "SanaPipeline", build_sana, sample={"max_sequence_length": 32}),
        Family("Lumina 2", "Lumina2Pipeline", build_lumina2, sample={"max_sequence_length": 32}),
        Family(
            "FLUX.2 [dev]",
            "Flux2Pipeline",
            build_flux2_dev,
            sample={"max_sequence_length": 32},
            requires=("torchvision",),
        ),
        Family("FLUX.2 [klein]", "Flux2KleinPipeline", build_flux2_klein, sample={"max_sequence_length": 32}),
        Family(
            "HiDream-I1",
            "HiDreamImagePipeline",
            build_hidream,
            text_encoder="text_encoder_4",
            sample={"max_sequence_length": 32},
        ),
        Family("HunyuanImage 2.1", "HunyuanImagePipeline", build_hunyuan_image),
    )
}


def folder_name(family: str) -> str:
    """``tiny-wan-2.1`` for "Wan 2.1"."""
    return "tiny-" + re.sub(r"[^a-z0-9.]+", "-", family.lower()).strip("-")


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


__all__ = ["FAMILIES", "Family", "ensure_family", "folder_name"]
