"""What a sampling run may ask of a model, checked before anything runs: prompt text and image size.

A 512 KiB prompt took 7-12 s to tokenize for one tiny step, while the text encoders read only
the first 77 (CLIP) or 512 (T5) tokens of it. A size above what the denoiser's position embedding
covers (SD3's `pos_embed_max_size`) fails deep inside the model after the whole load.
"""

from __future__ import annotations

from ..constants import DENOISERS
from ..files.inspect_model import ModelInfo
from ..problems import Problem

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
            return size * patch * _vae_scale(model)
    return None


def image_size_problems(model: ModelInfo, width, height) -> list[Problem]:
    limit = max_image_side(model)
    problems = []
    for field, value in (("width", width), ("height", height)):
        if limit is not None and isinstance(value, int) and value > limit:
            problems.append(
                Problem(
                    "image_too_large",
                    field,
                    f"{field} {value} is more than {model.pipeline_class} supports ({limit} pixels: "
                    "the transformer's pos_embed_max_size)",
                    f"use {field} {limit} or less",
                )
            )
    return problems
