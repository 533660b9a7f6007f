"""What a sampling run may ask of a model, checked before anything runs: prompt text, image size
and a video's frame count.

A 512 KiB prompt took 7-12 s to tokenize for one tiny step, while the text encoders read only
the first 77 (CLIP) or 512 (T5) tokens of it. A size above what the denoiser's position embedding
covers (SD3's `pos_embed_max_size`) fails deep inside the model after the whole load.
"""

from __future__ import annotations

import math

from ..constants import DENOISERS
from ..files.inspect_model import ModelInfo
from ..known.class_facts import pipeline_call
from ..problems import Problem

#: denoisers whose `pos_embed_max_size` counts positions, not positions per side: AuraFlow crops
#: a square of isqrt(size) per side from its table (a larger image fails with an IndexError).
POSITIONS_AS_COUNT = ("AuraFlowTransformer2DModel",)
MAX_PROMPT_CHARS = 8192  # ~1 500+ tokens: three times what the longest text encoder (T5, 512) reads


def prompt_problems(text, field: str = "prompt") -> list[Problem]:
    if not isinstance(text, str):
        return [
            Problem(
                "prompt_not_text",
                field,
                f"{field} must be text, got {type(text).__name__}",
                "type the prompt into the widget",
            )
        ]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return [
            Problem(
                "prompt_not_text",
                field,
                f"{field} holds a lone surrogate (character {exc.start}), which is not text a tokenizer can read",
                "retype or paste the prompt again",
            )
        ]
    if len(text) > MAX_PROMPT_CHARS:
        return [
            Problem(
                "prompt_too_long",
                field,
                f"{field} is {len(text):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted",
                "the text encoders read only the first 77 (CLIP) or 512 (T5) tokens and cut the "
                f"rest off anyway: shorten it to under {MAX_PROMPT_CHARS:,} characters",
            )
        ]
    return []


def _vae_scale(model: ModelInfo) -> int:
    vae = model.components.get("vae")
    blocks = vae.config_dict.get("block_out_channels") if vae is not None else None
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8


def max_image_side(model: ModelInfo) -> int | None:
    """The largest width/height the denoiser supports, in pixels (None: no fixed limit)."""
    for name in DENOISERS:
        info = model.components.get(name)
        config = info.config_dict if info is not None else {}
        size, patch = config.get("pos_embed_max_size"), config.get("patch_size", 1)
        if isinstance(size, int) and isinstance(patch, int) and size > 0 and patch > 0:
            if info.class_name in POSITIONS_AS_COUNT:
                size = math.isqrt(size)  # a table of size positions, a square of isqrt(size) per side
            return size * patch * _vae_scale(model)
    return None


def size_multiple(model: ModelInfo) -> int:
    """Width and height must be multiples of this: the VAE's spatial factor (where its config states
    it: Wan, HunyuanVideo, HunyuanImage; else from AutoencoderKL's blocks) times the denoiser's patch."""
    vae = model.components.get("vae")
    config = vae.config_dict if vae is not None else {}
    scale = next(
        (config[k] for k in ("spatial_compression_ratio", "scale_factor_spatial") if isinstance(config.get(k), int)),
        None,
    )
    if scale is None and vae is not None and vae.class_name == "AutoencoderKL":
        scale = _vae_scale(model)
    main = next((model.components[n] for n in DENOISERS if n in model.components), None)
    patch = main.config_dict.get("patch_size", 1) if main is not None else 1
    patch = patch[-1] if isinstance(patch, list) and patch else patch
    ok = isinstance(scale, int) and scale > 0 and isinstance(patch, int) and patch > 0
    return scale * patch if ok else 1


def image_size_problems(model: ModelInfo, width, height) -> list[Problem]:
    limit = max_image_side(model)
    multiple = size_multiple(model)
    problems = []
    for field, value in (("width", width), ("height", height)):
        if multiple > 1 and isinstance(value, int) and value % multiple:
            below = max(multiple, value // multiple * multiple)
            problems.append(
                Problem(
                    "image_size_invalid",
                    field,
                    f"{field} {value} is not a multiple of {multiple}, which {model.pipeline_class} needs "
                    "(its VAE's scale times the transformer's patch size)",
                    f"use {field} {below} or {below + multiple}",
                )
            )
    for field, value in (("width", width), ("height", height)):
        if limit is not None and isinstance(value, int) and value > limit:
            problems.append(
                Problem(
                    "image_too_large",
                    field,
                    f"{field} {value} is more than {model.pipeline_class} supports ({limit} pixels: "
                    "the transformer's position table, pos_embed_max_size)",
                    f"use {field} {limit} or less",
                )
            )
    return problems


def temporal_factor(model: ModelInfo) -> int | None:
    """How many frames the VAE folds into one latent frame (Wan, HunyuanVideo 4, LTX 8), from its
    config; None for an image pipeline."""
    if not is_video(model):
        return None
    vae = model.components.get("vae")
    config = vae.config_dict if vae is not None else {}
    for key in ("temporal_compression_ratio", "scale_factor_temporal"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    for key, base in (("temperal_downsample", 1), ("spatio_temporal_scaling", config.get("patch_size_t", 1))):
        flags = config.get(key)
        if isinstance(flags, list) and all(isinstance(f, bool) for f in flags) and isinstance(base, int):
            return base * 2 ** sum(flags)
    return None


def is_video(model: ModelInfo) -> bool:
    """Whether the pipeline renders frames (its __call__ takes num_frames: Wan, HunyuanVideo, LTX);
    Qwen-Image's VAE folds time too, but it renders images."""
    return "num_frames" in pipeline_call(model.pipeline_class)


FPS_ARGUMENTS = ("frame_rate", "fps")  # what a video pipeline's __call__ names its frame rate (LTX)
VIDEO_INPUTS = ("num_frames", "fps")  # the Sampler's inputs only a video pipeline uses


def video_inputs(model: ModelInfo) -> list[str]:
    """The Sampler's video inputs this pipeline uses: `num_frames` for a video, `fps` where its call
    takes a frame rate. An image pipeline uses neither (the editor shows them as not used)."""
    call = pipeline_call(model.pipeline_class)
    used = [VIDEO_INPUTS[0]] if "num_frames" in call else []
    return used + ([VIDEO_INPUTS[1]] if used and any(name in call for name in FPS_ARGUMENTS) else [])


def default_frames(model: ModelInfo) -> int | None:
    """The frame count the pipeline renders when none is given (Wan 81, LTX 161); None for images."""
    return pipeline_call(model.pipeline_class).get("num_frames")


def latent_frames(model: ModelInfo, num_frames: int) -> int:
    """Frames after the VAE's temporal compression (the first frame is kept whole): 1 for images."""
    factor = temporal_factor(model)
    return 1 if factor is None else (max(1, num_frames) - 1) // factor + 1


def frame_problems(model: ModelInfo, num_frames) -> list[Problem]:
    """A video's frame count must be factor*k + 1 (Wan and HunyuanVideo 4k+1, LTX 8k+1): the VAE
    keeps the first frame and folds each further `factor` frames into one latent frame."""
    factor = temporal_factor(model)
    if factor is None:
        return []
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        return [Problem("frames_invalid", "num_frames", f"num_frames {num_frames!r} is not a frame count", "use 33")]
    if (num_frames - 1) % factor:
        below = (num_frames - 1) // factor * factor + 1
        return [
            Problem(
                "frames_invalid",
                "num_frames",
                f"{model.pipeline_class} renders {factor}k+1 frames (its VAE folds {factor} frames into one); "
                f"{num_frames} is not one",
                f"use {below} or {below + factor}",
            )
        ]
    return []
