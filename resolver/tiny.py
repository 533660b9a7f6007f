"""Tiny diffusers pipelines with random weights, built offline.

The tests, the demo and the benchmarks never download anything: they build the pipelines they
need here, once, from configs (random weights, tokenizers from an in-memory vocabulary) and save
them in the same layout as a hub snapshot (``model_index.json`` + one folder per component,
safetensors). :func:`write_gguf` turns a saved component into a GGUF file of the kind
``<ModelClass>.from_single_file`` loads.

Rules every model here follows:

* every ``nn.Linear`` has ``in_features % 16 == 0`` (torch's CPU int8 matmul crashes otherwise);
* components are built directly in ``dtype`` (bf16 by default), one at a time, and dropped once
  saved, so even the 2-B-parameter FLUX transformer never exists twice in memory;
* everything is seeded: the same call writes the same weights.

This module is part of the resolver: it never imports ComfyUI, nor anything else from the pack.
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

__all__ = [
    "FLUX_SIZES",
    "PIPELINE_NAMES",
    "build_flux",
    "build_sd",
    "build_sd3",
    "ensure_pipeline",
    "flux_size_kwargs",
    "write_gguf",
]

#: Bump when a builder changes what it writes: ensure_pipeline rebuilds older folders.
RECIPE_VERSION = 1
#: Written last into a built folder; a folder without it is incomplete and gets rebuilt.
MARKER = ".pipequant-tiny.json"

PIPELINE_NAMES = {"flux": "tiny-flux", "sd3": "tiny-sd3", "sd": "tiny-sd"}

# FLUX transformer sizes for the benchmarks. Params: the transformer alone; disk: the whole bf16
# pipeline; build: measured on 2 shared CPU cores. "2b" keeps FLUX.1's attention shape (24 heads x
# 128 = 3072), so its GGUF can also be written with the original BFL tensor names that diffusers'
# converter expects (it hardcodes 3072). Building "2b" peaks at ~4.5 GB RSS (one bf16 copy).
FLUX_SIZES: dict[str, dict[str, Any]] = {
    # 1.0 M params, 3.9 MB, < 0.2 s
    "tiny": dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=64,
                 joint_attention_dim=128),
    # 20.6 M params, 43 MB
    "20m": dict(num_layers=2, num_single_layers=4, num_attention_heads=6, attention_head_dim=64,
                joint_attention_dim=128),
    # 198.6 M params, 401 MB, ~1.5 s
    "200m": dict(num_layers=5, num_single_layers=10, num_attention_heads=12, attention_head_dim=64,
                 joint_attention_dim=256),
    # 2.06 B params, 4.14 GB, ~35 s
    "2b": dict(num_layers=3, num_single_layers=7, num_attention_heads=24, attention_head_dim=128,
               joint_attention_dim=512),
}


def flux_size_kwargs(size: str) -> dict[str, Any]:
    """Keyword arguments for :func:`build_flux` giving a transformer of ``size``.

    ``size`` is one of ``"tiny"`` (1.0 M params), ``"20m"`` (20.6 M), ``"200m"`` (198.6 M),
    ``"2b"`` (2.06 B). Text encoders and VAE stay tiny at every size.
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


def _component_entry(obj: Any) -> list[str | None]:
    if obj is None:
        return [None, None]
    library = obj.__class__.__module__.split(".")[0]
    return [library, obj.__class__.__name__]


class _Writer:
    """Saves components one by one into a pipeline folder and records model_index entries."""

    def __init__(self, path: Path, max_shard_size: int | str | None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_shard_size = max_shard_size
        self.entries: dict[str, Any] = {}

    def add(self, name: str, obj: Any) -> None:
        self.entries[name] = _component_entry(obj)
        if obj is None:
            return
        folder = self.path / name
        if isinstance(obj, torch.nn.Module):
            _save_model(obj, folder, self.max_shard_size)
        else:  # tokenizer, scheduler
            obj.save_pretrained(str(folder))

    def set(self, key: str, value: Any) -> None:
        self.entries[key] = value

    def finish(self, pipeline_class: str) -> Path:
        _write_model_index(self.path, pipeline_class, self.entries)
        return self.path


# ----------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2/CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


CLIP_VOCAB_SIZE = 528  # 256 byte chars + 256 end-of-word variants + bos + eos, rounded up to 16
CLIP_BOS, CLIP_EOS = 512, 513
T5_VOCAB_SIZE = 128


def _clip_tokenizer(max_length: int = 77):
    """CLIP byte-level BPE tokenizer with a character-level vocabulary (no merges).

    Any text tokenizes (every byte has a token); each character is one token.
    """
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = CLIP_BOS
    vocab["<|endoftext|>"] = CLIP_EOS
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _t5_tokenizer(max_length: int = 512):
    """T5 (Unigram) tokenizer over printable ASCII characters, no sentinel tokens."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -5.0) for c in range(33, 127)]  # 94 printable characters -> 98 pieces
    pieces += [("▁" + chr(c), -3.0) for c in range(ord("a"), ord("z") + 1)]  # word starts: 124
    assert len(pieces) <= T5_VOCAB_SIZE
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


# ----------------------------------------------------------------------------- text encoders


def _clip_config(hidden: int, layers: int, heads: int | None = None, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads or max(1, hidden // 64),
        max_position_embeddings=77,
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
    for value, what in ((inner, "num_attention_heads * attention_head_dim"),
                        (joint_attention_dim, "joint_attention_dim"), (text_hidden, "text_hidden")):
        _check(value, what)
    if attention_head_dim % 4 or attention_head_dim < 32:
        raise ValueError("attention_head_dim must be a multiple of 4 and at least 32")
    rope_side = (attention_head_dim - 16) // 2  # even, as RoPE needs: FLUX.1 uses (16, 56, 56) for 128
    axes_dims_rope = (16, rope_side, rope_side)

    w = _Writer(Path(path), max_shard_size)
    w.add("scheduler", FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    ))
    w.add("tokenizer", _clip_tokenizer())
    w.add("tokenizer_2", _t5_tokenizer())
    for name, factory, s in (
        ("text_encoder", lambda: CLIPTextModel(_clip_config(text_hidden, text_layers)), seed + 1),
        ("text_encoder_2", lambda: T5EncoderModel(_t5_config(joint_attention_dim, text_layers)), seed + 2),
        ("vae", lambda: _vae(16, 0.3611, 0.1159), seed + 3),
        ("transformer", lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64, out_channels=None,
            num_layers=num_layers, num_single_layers=num_single_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim, pooled_projection_dim=text_hidden,
            guidance_embeds=guidance_embeds, axes_dims_rope=axes_dims_rope,
        ), seed + 4),
    ):
        model = _build(factory, dtype, s)
        big = _is_big(model)
        w.add(name, model)
        del model  # before building the next one: never two big models at once
        if big:
            gc.collect()
    w.add("image_encoder", None)
    w.add("feature_extractor", None)
    return w.finish("FluxPipeline")


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
    for value, what in ((inner, "num_attention_heads * attention_head_dim"), (clip_hidden, "clip_hidden"),
                        (t5_hidden, "t5_hidden")):
        _check(value, what)
    if t5_hidden < 2 * clip_hidden:
        raise ValueError("t5_hidden must be at least 2 * clip_hidden")

    w = _Writer(Path(path), max_shard_size)
    w.add("scheduler", FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    w.add("tokenizer", _clip_tokenizer())
    w.add("tokenizer_2", _clip_tokenizer())
    w.add("tokenizer_3", _t5_tokenizer())
    for name, factory, s in (
        ("text_encoder", lambda: CLIPTextModelWithProjection(_clip_config(clip_hidden, text_layers)), seed + 1),
        ("text_encoder_2", lambda: CLIPTextModelWithProjection(_clip_config(clip_hidden, text_layers)), seed + 2),
        ("text_encoder_3", lambda: T5EncoderModel(_t5_config(t5_hidden, text_layers)), seed + 3),
        ("vae", lambda: _vae(16, 1.5305, 0.0609), seed + 4),
        ("transformer", lambda: SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=t5_hidden, caption_projection_dim=inner,
            pooled_projection_dim=2 * clip_hidden, pos_embed_max_size=32, qk_norm=qk_norm,
        ), seed + 5),
    ):
        model = _build(factory, dtype, s)
        big = _is_big(model)
        w.add(name, model)
        del model  # before building the next one: never two big models at once
        if big:
            gc.collect()
    w.add("image_encoder", None)
    w.add("feature_extractor", None)
    return w.finish("StableDiffusion3Pipeline")


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

    w = _Writer(Path(path), max_shard_size)
    w.add("scheduler", PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    ))
    w.add("tokenizer", _clip_tokenizer())
    for name, factory, s in (
        ("text_encoder", lambda: CLIPTextModel(_clip_config(cross_attention_dim, text_layers)), seed + 1),
        ("vae", lambda: _vae(4, 0.18215, None), seed + 2),
        ("unet", lambda: UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=tuple(block_out_channels), down_block_types=down, up_block_types=up,
            cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
        ), seed + 3),
    ):
        model = _build(factory, dtype, s)
        big = _is_big(model)
        w.add(name, model)
        del model  # before building the next one: never two big models at once
        if big:
            gc.collect()
    w.add("safety_checker", None)
    w.add("feature_extractor", None)
    w.add("image_encoder", None)
    w.set("requires_safety_checker", False)
    return w.finish("StableDiffusionPipeline")


# ----------------------------------------------------------------------------- ensure_pipeline

_BUILDERS: dict[str, Callable[..., Path]] = {"flux": build_flux, "sd3": build_sd3, "sd": build_sd}


def ensure_pipeline(kind: str, root: str | os.PathLike, *, size: str = "tiny") -> Path:
    """Build ``root/<name>`` once and return it (``name``: ``tiny-flux``, ``tiny-sd3``, ``tiny-sd``).

    ``size`` picks a FLUX transformer size (:data:`FLUX_SIZES`); other sizes than ``"tiny"`` live
    in ``flux-<size>``. A folder counts as built only when its marker file (written last) matches
    this recipe; otherwise it is rebuilt. The build goes to a temporary sibling folder that is
    renamed into place, so concurrent callers never see a half-written pipeline.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown pipeline kind {kind!r}; choose one of {sorted(_BUILDERS)}")
    kwargs: dict[str, Any] = {}
    name = PIPELINE_NAMES[kind]
    if kind == "flux" and size != "tiny":
        kwargs = flux_size_kwargs(size)
        name = f"flux-{size.lower()}"
    elif size != "tiny":
        raise ValueError(f"size {size!r} is only available for kind 'flux'")

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


# ----------------------------------------------------------------------------- GGUF

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
            return dst + diffusers_name[len(src):]
    return None


# A plan entry: (GGUF name, source tensor names, how to combine them). "one": the single source;
# "cat": concatenated along dim 0; "swap": the single source with its two halves swapped.
_Entry = tuple[str, tuple[str, ...], str]


def _flux_bfl_plan(keys: list[str]) -> list[_Entry]:
    """The inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``."""
    plan: list[_Entry] = []
    double = sorted({int(k.split(".")[1]) for k in keys if k.startswith("transformer_blocks.")})
    single = sorted({int(k.split(".")[1]) for k in keys if k.startswith("single_transformer_blocks.")})
    for k in keys:
        if k.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            continue
        new = _flux_bfl_name(k)
        if new is None:
            raise ValueError(f"no original FLUX name known for tensor {k!r}")
        # BFL's final adaLN stores (shift, scale); diffusers (scale, shift)
        plan.append((new, (k,), "swap" if k.startswith("norm_out.linear.") else "one"))
    for i in double:
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            plan += [
                (f"{b}img_mod.lin.{p}", (f"{d}norm1.linear.{p}",), "one"),
                (f"{b}txt_mod.lin.{p}", (f"{d}norm1_context.linear.{p}",), "one"),
                (f"{b}img_attn.qkv.{p}", tuple(f"{d}attn.to_{x}.{p}" for x in "qkv"), "cat"),
                (f"{b}txt_attn.qkv.{p}", tuple(f"{d}attn.add_{x}_proj.{p}" for x in "qkv"), "cat"),
                (f"{b}img_mlp.0.{p}", (f"{d}ff.net.0.proj.{p}",), "one"),
                (f"{b}img_mlp.2.{p}", (f"{d}ff.net.2.{p}",), "one"),
                (f"{b}txt_mlp.0.{p}", (f"{d}ff_context.net.0.proj.{p}",), "one"),
                (f"{b}txt_mlp.2.{p}", (f"{d}ff_context.net.2.{p}",), "one"),
                (f"{b}img_attn.proj.{p}", (f"{d}attn.to_out.0.{p}",), "one"),
                (f"{b}txt_attn.proj.{p}", (f"{d}attn.to_add_out.{p}",), "one"),
            ]
        plan += [
            (f"{b}img_attn.norm.query_norm.scale", (f"{d}attn.norm_q.weight",), "one"),
            (f"{b}img_attn.norm.key_norm.scale", (f"{d}attn.norm_k.weight",), "one"),
            (f"{b}txt_attn.norm.query_norm.scale", (f"{d}attn.norm_added_q.weight",), "one"),
            (f"{b}txt_attn.norm.key_norm.scale", (f"{d}attn.norm_added_k.weight",), "one"),
        ]
    for i in single:
        s, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            plan += [
                (f"{b}modulation.lin.{p}", (f"{s}norm.linear.{p}",), "one"),
                (f"{b}linear1.{p}", tuple(f"{s}{x}.{p}" for x in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")), "cat"),
                (f"{b}linear2.{p}", (f"{s}proj_out.{p}",), "one"),
            ]
        plan += [
            (f"{b}norm.query_norm.scale", (f"{s}attn.norm_q.weight",), "one"),
            (f"{b}norm.key_norm.scale", (f"{s}attn.norm_k.weight",), "one"),
        ]
    used = {src for _, srcs, _ in plan for src in srcs}
    missing, unknown = used - set(keys), set(keys) - used
    if missing or unknown:
        raise ValueError(f"FLUX tensors do not map to BFL names: missing {sorted(missing)[:5]}, unmapped {sorted(unknown)[:5]}")
    return plan


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
    *,
    naming: str = "diffusers",
) -> Path:
    """Write ``pipeline_dir/component``'s weights as a GGUF file and return its path.

    ``qtype``: ``"Q8_0"``, ``"Q4_0"`` or ``"BF16"`` (what the ``gguf`` package can write).
    ``naming``: ``"diffusers"`` writes the model's own state-dict names: diffusers' single-file
    loader then skips conversion (the names equal the model's, exactly), which works at any size.
    ``"bfl"`` (FLUX transformer only) writes the original Black Forest Labs names that published
    FLUX GGUF files use; diffusers converts them back, but its converter hardcodes FLUX.1's inner
    width 3072 (24 heads x 128), so only models of that width (e.g. size ``"2b"``) load.

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

    qtypes = {"Q8_0": gguf.GGMLQuantizationType.Q8_0, "Q4_0": gguf.GGMLQuantizationType.Q4_0,
              "BF16": gguf.GGMLQuantizationType.BF16}
    try:
        target = qtypes[qtype.upper()]
    except KeyError:
        raise ValueError(f"qtype must be one of {sorted(qtypes)} (gguf from PyPI cannot write K-quants), got {qtype!r}") from None
    if naming not in ("diffusers", "bfl"):
        raise ValueError(f"naming must be 'diffusers' or 'bfl', got {naming!r}")

    folder = Path(pipeline_dir) / component
    config = json.loads((folder / "config.json").read_text())
    class_name = config.get("_class_name", "")
    if "_diffusers_version" not in config:
        raise ValueError(f"{folder} is not a diffusers model (GGUF single-file loading needs one)")
    is_flux = class_name == "FluxTransformer2DModel"
    if naming == "bfl":
        if not is_flux:
            raise ValueError("naming='bfl' is only defined for FluxTransformer2DModel")
        inner = config["num_attention_heads"] * config["attention_head_dim"]
        if inner != 3072:
            raise ValueError(
                f"naming='bfl' needs an inner width of 3072 (diffusers' FLUX converter hardcodes it); "
                f"this transformer has {inner}. Use naming='diffusers' or size '2b'."
            )

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

        def shape_of(entry: _Entry) -> tuple[int, ...]:
            shapes = [tuple(where[src].get_slice(src).get_shape()) for src in entry[1]]
            if entry[2] == "cat":
                return (sum(sh[0] for sh in shapes), *shapes[0][1:])
            return shapes[0]

        def load(entry: _Entry) -> torch.Tensor:
            tensors = [where[src].get_tensor(src) for src in entry[1]]
            if entry[2] == "cat":
                return torch.cat(tensors, dim=0)
            if entry[2] == "swap":
                a, b = tensors[0].chunk(2, dim=0)
                return torch.cat([b, a], dim=0)
            return tensors[0]

        plan = _flux_bfl_plan(keys) if naming == "bfl" else [(k, (k,), "one") for k in keys]

        def choose(name: str, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
            if len(shape) <= 1 or _numel(shape) <= _SMALL:
                return F32
            if len(shape) != 2:  # convs, embeddings tables of other ranks: diffusers only wraps Linear
                return F32
            if quantizing and is_flux:
                bfl = name if naming == "bfl" else (_flux_bfl_name(name) or "")
                if any(f in bfl for f in _FLUX_KEEP_F32):
                    return F32
                if any(f in bfl for f in _FLUX_KEEP_F16):
                    return F16
            if shape[-1] % block_size:
                return F32
            return target

        writer = gguf.GGUFWriter(path=None, arch=_gguf_arch(class_name))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type({"Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                              "BF16": gguf.LlamaFileType.MOSTLY_BF16}[target.name])
        writer.add_string("pipequant.source_class", class_name)
        writer.add_string("pipequant.naming", naming)

        # Pass 1: tensor infos from the safetensors headers (nothing loaded).
        infos: list[tuple[_Entry, gguf.GGMLQuantizationType]] = []
        for entry in plan:
            shape = shape_of(entry)
            qt = choose(entry[0], shape)
            if qt == F32:
                writer.add_tensor_info(entry[0], shape, np.dtype(np.float32), _numel(shape) * 4, raw_dtype=F32)
            elif qt == F16:
                writer.add_tensor_info(entry[0], shape, np.dtype(np.float16), _numel(shape) * 2, raw_dtype=F16)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qt)
                writer.add_tensor_info(entry[0], byte_shape, np.dtype(np.uint8), _numel(byte_shape), raw_dtype=qt)
            infos.append((entry, qt))

        out_file = Path(out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_file.with_name(out_file.name + f".tmp-{os.getpid()}")
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            # Pass 2: data, one tensor at a time.
            for entry, qt in infos:
                writer.write_tensor_data(_encode(load(entry), qt, gguf, np))
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
