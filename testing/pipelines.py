"""Tiny diffusers pipelines with random weights, built offline.

The tests, the demo and the benchmarks never download anything: they build the pipelines they
need here, once, from configs (random weights, tokenizers from an in-memory vocabulary) and save
them in the same layout as a hub snapshot (``model_index.json`` + one folder per component,
safetensors); :func:`ensure_pipeline` builds each once per folder.

Rules every model here follows:

* every ``nn.Linear`` has ``in_features % 16 == 0`` (torch's CPU int8 matmul crashes otherwise);
* components are built directly in ``dtype`` (bf16 by default), one at a time, and dropped once
  saved, so even the 2-B-parameter FLUX transformer never exists twice in memory;
* everything is seeded: the same call writes the same weights.

Test and demo tooling, not part of the resolver: nothing in ``resolver/`` imports it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .tokenizers import CLIP_BOS, CLIP_EOS, CLIP_VOCAB_SIZE, T5_VOCAB_SIZE, clip_tokenizer, t5_tokenizer

__all__ = [
    "FLUX_SIZES",
    "PIPELINE_NAMES",
    "build_flux",
    "build_sd",
    "build_sd3",
    "ensure_pipeline",
    "flux_size_kwargs",
    "pipeline_name",
]

#: Bump when a builder changes what it writes: ensure_pipeline rebuilds older folders.
RECIPE_VERSION = 1
#: Written last into a built folder; a folder without it is incomplete and gets rebuilt.
MARKER = ".pipequant-tiny.json"

PIPELINE_NAMES = {"flux": "tiny-flux", "sd3": "tiny-sd3", "sd": "tiny-sd"}

# FLUX transformer sizes for the benchmarks. Params: the transformer alone; disk: the whole bf16
# pipeline; build: measured on 2 shared CPU cores. "2b" keeps FLUX.1's attention shape (24 heads x
# 128 = 3072). Building "2b" peaks at ~4.5 GB RSS (one bf16 copy).
FLUX_SIZES: dict[str, dict[str, Any]] = {
    # 1.0 M params, 3.9 MB, < 0.2 s
    "tiny": dict(
        num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=64, joint_attention_dim=128
    ),
    # 20.6 M params, 43 MB
    "20m": dict(
        num_layers=2, num_single_layers=4, num_attention_heads=6, attention_head_dim=64, joint_attention_dim=128
    ),
    # 198.6 M params, 401 MB, ~1.5 s
    "200m": dict(
        num_layers=5, num_single_layers=10, num_attention_heads=12, attention_head_dim=64, joint_attention_dim=256
    ),
    # 2.06 B params, 4.14 GB, ~35 s
    "2b": dict(
        num_layers=3, num_single_layers=7, num_attention_heads=24, attention_head_dim=128, joint_attention_dim=512
    ),
    # Most of the weight in the T5 encoder instead (130 M params, 1024 wide, 12 layers; the transformer
    # 2.4 M): what a transformers model's load is measured on (bench/peak_load.py). 265 MB.
    "t5-130m": dict(
        num_layers=1,
        num_single_layers=1,
        num_attention_heads=2,
        attention_head_dim=64,
        joint_attention_dim=1024,
        text_layers=12,
    ),
}


def flux_size_kwargs(size: str) -> dict[str, Any]:
    """Keyword arguments for :func:`build_flux` giving a transformer of ``size``.

    ``size`` is one of ``"tiny"`` (1.0 M params), ``"20m"`` (20.6 M), ``"200m"`` (198.6 M),
    ``"2b"`` (2.06 B). Text encoders and VAE stay tiny at every size but ``"t5-130m"``, whose weight
    is in a 130 M-parameter T5 encoder.
    """
    try:
        return dict(FLUX_SIZES[size.lower()])
    except KeyError:
        raise ValueError(f"unknown FLUX size {size!r}; choose one of {sorted(FLUX_SIZES)}") from None


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Allocate parameters directly in ``dtype`` (no fp32 copy first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _build(factory: Callable[[], torch.nn.Module], dtype: torch.dtype, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with _default_dtype(dtype), torch.no_grad():
        model = factory()
    if any(p.dtype != dtype for p in model.parameters()):  # some module forced its own dtype
        model = model.to(dtype)
    return model.eval()


def _is_big(model: torch.nn.Module) -> bool:
    """Worth a full gc pass once saved (a pass costs ~0.25 s with diffusers imported)."""
    return sum(p.numel() for p in model.parameters()) > 50_000_000


def _save_model(model: torch.nn.Module, folder: Path, max_shard_size: int | str | None) -> None:
    kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    if model.__class__.__module__.startswith("diffusers"):
        kwargs["safe_serialization"] = True  # transformers 5 always writes safetensors
    model.save_pretrained(str(folder), **kwargs)


def _write_model_index(path: Path, pipeline_class: str, components: dict[str, Any]) -> None:
    import diffusers

    index: dict[str, Any] = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__}
    index.update(components)
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _component_entry(obj: Any) -> list[str]:
    library = obj.__class__.__module__.split(".")[0]
    return [library, obj.__class__.__name__]


def _write_pipeline(
    path: Path,
    pipeline_class: str,
    *,
    parts: dict[str, Any],
    models: list[tuple[str, Callable[[], torch.nn.Module], int]],
    absent: tuple[str, ...],
    dtype: torch.dtype,
    max_shard_size: int | str | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The one build-and-save loop every builder uses; returns ``path``.

    ``parts``: schedulers and tokenizers, saved as given. ``models``: ``(name, factory, seed)``,
    each built in ``dtype``, saved and dropped before the next is built (never two big models at
    once). ``absent``: optional components the pipeline class knows, recorded as ``[null, null]``.
    ``extra``: further ``model_index.json`` keys.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for name, obj in parts.items():
        entries[name] = _component_entry(obj)
        obj.save_pretrained(str(path / name))
    for name, factory, seed in models:
        model = _build(factory, dtype, seed)
        big = _is_big(model)
        entries[name] = _component_entry(model)
        _save_model(model, path / name, max_shard_size)
        del model
        if big:
            gc.collect()
    entries.update({name: [None, None] for name in absent})
    entries.update(extra or {})
    _write_model_index(path, pipeline_class, entries)
    return path


# ----------------------------------------------------------------------------- text encoders


def _clip_config(
    hidden: int, layers: int, heads: int | None = None, projection_dim: int | None = None, max_positions: int = 77
):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads or max(1, hidden // 64),
        max_position_embeddings=max_positions,
        projection_dim=projection_dim or hidden,
        hidden_act="quick_gelu",
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS,
    )


def _t5_config(d_model: int, layers: int):
    from transformers import T5Config

    heads = max(1, d_model // 64)
    return T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=d_model,
        d_kv=64,
        d_ff=d_model * 2,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX and SD3 use
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None, channels: int = 16):
    from diffusers import AutoencoderKL

    # One block: vae_scale_factor 1, so a 32x32 image is a 32x32 latent. 16 channels (not 4) so
    # the mid-block attention's Linear layers have in_features 16.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(channels,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=shift_factor is None,  # SD1 VAE has them, FLUX/SD3 do not
        use_post_quant_conv=shift_factor is None,
    )


def _check(value: int, what: str) -> None:
    if value % 16:
        raise ValueError(f"{what} must be a multiple of 16 (torch CPU int8 matmul), got {value}")


# ----------------------------------------------------------------------------- FLUX


def build_flux(
    path: str | os.PathLike,
    *,
    num_layers: int = 1,
    num_single_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 64,
    joint_attention_dim: int = 128,
    text_hidden: int = 128,
    text_layers: int = 2,
    seed: int = 0,
    max_shard_size: int | str | None = None,
    guidance_embeds: bool = True,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a FLUX.1-dev-shaped ``FluxPipeline`` folder with random weights at ``path``.

    ``joint_attention_dim`` is also the T5 encoder's width; ``text_hidden`` is the CLIP encoder's
    width and the transformer's ``pooled_projection_dim``. ``max_shard_size`` is handed to every
    model's ``save_pretrained`` (e.g. ``"200MB"`` to get hub-like sharded safetensors).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    inner = num_attention_heads * attention_head_dim
    for value, what in (
        (inner, "num_attention_heads * attention_head_dim"),
        (joint_attention_dim, "joint_attention_dim"),
        (text_hidden, "text_hidden"),
    ):
        _check(value, what)
    if attention_head_dim % 4 or attention_head_dim < 32:
        raise ValueError("attention_head_dim must be a multiple of 4 and at least 32")
    rope_side = (attention_head_dim - 16) // 2  # even, as RoPE needs: FLUX.1 uses (16, 56, 56) for 128
    axes_dims_rope = (16, rope_side, rope_side)

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return _write_pipeline(
        Path(path),
        "FluxPipeline",
        parts={"scheduler": scheduler, "tokenizer": clip_tokenizer(), "tokenizer_2": t5_tokenizer()},
        models=[
            ("text_encoder", lambda: CLIPTextModel(_clip_config(text_hidden, text_layers)), seed + 1),
            ("text_encoder_2", lambda: T5EncoderModel(_t5_config(joint_attention_dim, text_layers)), seed + 2),
            ("vae", lambda: _vae(16, 0.3611, 0.1159), seed + 3),
            (
                "transformer",
                lambda: FluxTransformer2DModel(
                    patch_size=1,
                    in_channels=64,
                    out_channels=None,
                    num_layers=num_layers,
                    num_single_layers=num_single_layers,
                    attention_head_dim=attention_head_dim,
                    num_attention_heads=num_attention_heads,
                    joint_attention_dim=joint_attention_dim,
                    pooled_projection_dim=text_hidden,
                    guidance_embeds=guidance_embeds,
                    axes_dims_rope=axes_dims_rope,
                ),
                seed + 4,
            ),
        ],
        absent=("image_encoder", "feature_extractor"),
        dtype=dtype,
        max_shard_size=max_shard_size,
    )


# ----------------------------------------------------------------------------- SD3


def build_sd3(
    path: str | os.PathLike,
    *,
    num_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 64,
    clip_hidden: int = 64,
    t5_hidden: int = 128,
    text_layers: int = 2,
    qk_norm: str | None = "rms_norm",
    seed: int = 0,
    max_shard_size: int | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write an SD3.5-shaped ``StableDiffusion3Pipeline`` folder with random weights at ``path``.

    Two CLIP encoders with projection (``clip_hidden`` wide each), a T5 encoder ``t5_hidden`` wide
    (also the transformer's ``joint_attention_dim``; it must be at least ``2 * clip_hidden``, the
    pipeline pads the concatenated CLIP states to it), 16-channel latents.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    inner = num_attention_heads * attention_head_dim
    for value, what in (
        (inner, "num_attention_heads * attention_head_dim"),
        (clip_hidden, "clip_hidden"),
        (t5_hidden, "t5_hidden"),
    ):
        _check(value, what)
    if t5_hidden < 2 * clip_hidden:
        raise ValueError("t5_hidden must be at least 2 * clip_hidden")

    return _write_pipeline(
        Path(path),
        "StableDiffusion3Pipeline",
        parts={
            "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
            "tokenizer": clip_tokenizer(),
            "tokenizer_2": clip_tokenizer(),
            "tokenizer_3": t5_tokenizer(),
        },
        models=[
            ("text_encoder", lambda: CLIPTextModelWithProjection(_clip_config(clip_hidden, text_layers)), seed + 1),
            ("text_encoder_2", lambda: CLIPTextModelWithProjection(_clip_config(clip_hidden, text_layers)), seed + 2),
            ("text_encoder_3", lambda: T5EncoderModel(_t5_config(t5_hidden, text_layers)), seed + 3),
            ("vae", lambda: _vae(16, 1.5305, 0.0609), seed + 4),
            (
                "transformer",
                lambda: SD3Transformer2DModel(
                    sample_size=32,
                    patch_size=2,
                    in_channels=16,
                    out_channels=16,
                    num_layers=num_layers,
                    attention_head_dim=attention_head_dim,
                    num_attention_heads=num_attention_heads,
                    joint_attention_dim=t5_hidden,
                    caption_projection_dim=inner,
                    pooled_projection_dim=2 * clip_hidden,
                    pos_embed_max_size=32,
                    qk_norm=qk_norm,
                ),
                seed + 5,
            ),
        ],
        absent=("image_encoder", "feature_extractor"),
        dtype=dtype,
        max_shard_size=max_shard_size,
    )


# ----------------------------------------------------------------------------- SD1


def build_sd(
    path: str | os.PathLike,
    *,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 64,
    text_layers: int = 2,
    seed: int = 0,
    max_shard_size: int | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write an SD1-shaped ``StableDiffusionPipeline`` folder with random weights at ``path``.

    UNet with one plain and one cross-attention down block, CLIP text encoder ``cross_attention_dim``
    wide, 4-channel latents, PNDM scheduler; no safety checker or feature extractor.
    """
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    for c in block_out_channels:
        _check(c, "block_out_channels")
    _check(cross_attention_dim, "cross_attention_dim")
    n = len(block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)

    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return _write_pipeline(
        Path(path),
        "StableDiffusionPipeline",
        parts={"scheduler": scheduler, "tokenizer": clip_tokenizer()},
        models=[
            ("text_encoder", lambda: CLIPTextModel(_clip_config(cross_attention_dim, text_layers)), seed + 1),
            ("vae", lambda: _vae(4, 0.18215, None), seed + 2),
            (
                "unet",
                lambda: UNet2DConditionModel(
                    sample_size=32,
                    in_channels=4,
                    out_channels=4,
                    layers_per_block=1,
                    block_out_channels=tuple(block_out_channels),
                    down_block_types=down,
                    up_block_types=up,
                    cross_attention_dim=cross_attention_dim,
                    attention_head_dim=8,
                    norm_num_groups=16,
                ),
                seed + 3,
            ),
        ],
        absent=("safety_checker", "feature_extractor", "image_encoder"),
        extra={"requires_safety_checker": False},
        dtype=dtype,
        max_shard_size=max_shard_size,
    )


# ----------------------------------------------------------------------------- ensure_pipeline

_BUILDERS: dict[str, Callable[..., Path]] = {"flux": build_flux, "sd3": build_sd3, "sd": build_sd}


def pipeline_name(kind: str, size: str = "tiny") -> str:
    """The folder :func:`ensure_pipeline` builds: ``tiny-flux``, ``tiny-sd3``, ``tiny-sd``, ``flux-<size>``."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown pipeline kind {kind!r}; choose one of {sorted(_BUILDERS)}")
    if size == "tiny":
        return PIPELINE_NAMES[kind]
    if kind != "flux":
        raise ValueError(f"size {size!r} is only available for kind 'flux'")
    flux_size_kwargs(size)  # raises on an unknown size
    return f"flux-{size.lower()}"


def ensure_pipeline(
    kind: str, root: str | os.PathLike, *, size: str = "tiny", max_shard_size: int | str | None = None
) -> Path:
    """Build ``root/<pipeline_name(kind, size)>`` once and return it.

    ``size`` picks a FLUX transformer size (:data:`FLUX_SIZES`); ``max_shard_size`` is handed to
    every model's ``save_pretrained`` (e.g. ``"200MB"`` for hub-like shards). A folder counts as
    built only when its marker file (written last) matches this recipe; otherwise it is rebuilt.
    The build goes to a temporary sibling folder that is renamed into place, so concurrent callers
    never see a half-written pipeline.
    """
    name = pipeline_name(kind, size)
    kwargs: dict[str, Any] = flux_size_kwargs(size) if size != "tiny" else {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size

    root = Path(root)
    target = root / name
    recipe = {"kind": kind, "size": size, "kwargs": kwargs, "recipe_version": RECIPE_VERSION}
    if _marker_matches(target, recipe):
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _BUILDERS[kind](tmp, **kwargs)
        (tmp / MARKER).write_text(json.dumps(recipe, sort_keys=True) + "\n")
        if target.exists():
            if _marker_matches(target, recipe):  # someone else finished first
                return target
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _marker_matches(target, recipe):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _marker_matches(folder: Path, recipe: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False
