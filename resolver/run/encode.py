"""Encode a prompt with the pipeline's own (possibly quantized) text encoders, family by family.

The result is the layout ComfyUI's text encoders give for that family (states + pooled vector),
so the node that turns it into a CONDITIONING only wraps it. No ComfyUI import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Denoiser class -> family, for the families whose encoders and denoisers are mapped.
FAMILY_OF_DENOISER = {
    "FluxTransformer2DModel": "flux",
    "ChromaTransformer2DModel": "chroma",
    "WanTransformer3DModel": "wan",  # text to video only (below)
    "HunyuanVideoTransformer3DModel": "hunyuan_video",  # text to video only (below)
    "LTXVideoTransformer3DModel": "ltx",
    "SD3Transformer2DModel": "sd3",
    "UNet2DConditionModel": "sd1",  # "sdxl" when the UNet takes text_time embeddings (below)
    "QwenImageTransformer2DModel": "qwen_image",  # text-to-image only: the Edit pipelines need their image
    "Lumina2Transformer2DModel": "lumina2",
    "ZImageTransformer2DModel": "z_image",
    "HiDreamImageTransformer2DModel": "hidream",
}
FAMILY_TITLES = {
    "flux": "FLUX.1",
    "chroma": "Chroma",
    "wan": "Wan 2.1 / 2.2 A14B (text to video)",
    "hunyuan_video": "HunyuanVideo (text to video)",
    "ltx": "LTX-Video 0.9 (text to video)",
    "sd3": "Stable Diffusion 3 / 3.5",
    "sdxl": "SDXL",
    "sd1": "Stable Diffusion 1.x",
    "qwen_image": "Qwen-Image",
    "lumina2": "Lumina Image 2.0",
    "z_image": "Z-Image",
    "hidream": "HiDream-I1",
}


DENOISER_SLOTS = ("transformer", "unet")  # where the bridge looks for the denoiser, loaded or on disk


def denoiser_of(pipe):
    """The pipeline's denoiser module (transformer or unet), or None."""
    for name in DENOISER_SLOTS:
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def denoiser_family(class_name: str | None, config=None, pipeline_class: str = "") -> str | None:
    """Which mapped family a denoiser is, from its class name and config alone (model_index.json and
    the denoiser's config.json say it: no weights read), or None. The one rule: `family_of` (a loaded
    pipeline) and `model_family` (a folder, before Run) both ask it."""
    family = FAMILY_OF_DENOISER.get(class_name) if isinstance(class_name, str) else None
    settings = config if hasattr(config, "get") else vars(config) if hasattr(config, "__dict__") else {}
    if family == "sd1" and settings.get("addition_embed_type") == "text_time":
        family = "sdxl"
    if family == "wan" and not _wan_text_to_video(settings):
        family = None
    if family == "hunyuan_video" and settings.get("image_condition_type"):
        family = None  # HunyuanVideo image to video (latent concat / token replace)
    if family == "qwen_image" and "Edit" in pipeline_class:
        family = None  # an edit pipeline encodes its prompt with the input image: not mapped
    return family


def _wan_text_to_video(settings) -> bool:
    """ComfyUI's WAN21_T2V shape: 16 latent channels in and out, no CLIP image states (image to
    video and Wan 2.2 TI2V 5B's 48-channel latents are not mapped)."""
    in_channels = settings.get("in_channels")
    return in_channels == (settings.get("out_channels") or in_channels) == 16 and not settings.get("image_dim")


def family_of(pipe) -> str | None:
    """Which mapped family the pipeline is ("flux", "sd3", "sdxl", "sd1"), or None."""
    denoiser = denoiser_of(pipe)
    if denoiser is None:
        return None
    return denoiser_family(type(denoiser).__name__, getattr(denoiser, "config", None), type(pipe).__name__)


def model_family(model) -> tuple[str | None, str | None]:
    """(family or None, denoiser class name or None) of a pipeline folder as `files.inspect_model`
    reads it (its ModelInfo): the bridge's verdict before anything loads."""
    for name in DENOISER_SLOTS:
        info = model.components.get(name)
        if info is not None:
            return denoiser_family(info.class_name, info.config_dict, model.pipeline_class), info.class_name
    return None, None


def families_text() -> str:
    return ", ".join(FAMILY_TITLES.values())


@dataclass
class Encoded:
    """Text states (batch, tokens, width) and the extras ComfyUI keeps beside them (pooled_output)."""

    states: object
    extras: dict = field(default_factory=dict)


def encode_prompt(pipe, text: str, *, max_sequence_length: int = 0) -> Encoded:
    """`pipe.encode_prompt` for one prompt, without classifier-free-guidance negatives (ComfyUI
    encodes the negative prompt as its own CONDITIONING). Tensors come back in float32 on the CPU,
    where ComfyUI keeps conditioning (float32 holds bf16 values exactly)."""
    from .context import diffusers_context

    family = family_of(pipe)
    if family is None:
        raise ValueError(f"no prompt encoding is mapped for {type(pipe).__name__}; mapped: {families_text()}")
    device = pipe._execution_device
    with diffusers_context():
        if family in FAMILY_ENCODERS:
            states, extras = FAMILY_ENCODERS[family](pipe, text, device, max_sequence_length)
        elif family == "flux":
            kwargs = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
            states, pooled, _ids = pipe.encode_prompt(text, prompt_2=None, device=device, **kwargs)
            extras = {"pooled_output": pooled}
        elif family == "chroma":
            kwargs = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
            states, _ids, mask, *_ = pipe.encode_prompt(
                text, device=device, do_classifier_free_guidance=False, **kwargs
            )
            # Chroma attends to the prompt's tokens and its first padding token only (the
            # pipeline's mask): those tokens, unpadded, as ComfyUI's own Chroma encoder gives.
            states = states[:, : int(mask[0].sum())]
            extras = {"pooled_output": None}  # T5 only: core's Chroma conditioning carries None
        elif family == "sd3":
            kwargs = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
            states, _neg, pooled, _neg_pooled = pipe.encode_prompt(
                text, None, None, device=device, do_classifier_free_guidance=False, **kwargs
            )
            extras = {"pooled_output": pooled}
        elif family == "sdxl":
            states, _neg, pooled, _neg_pooled = pipe.encode_prompt(
                text, device=device, do_classifier_free_guidance=False
            )
            extras = {"pooled_output": pooled}
        else:
            states, _neg = pipe.encode_prompt(text, device, 1, False)
            extras = {}
    return Encoded(_plain(states), {k: _plain(v) for k, v in extras.items()})


def _length(max_sequence_length: int) -> dict:
    return {"max_sequence_length": max_sequence_length} if max_sequence_length else {}


def _all_tokens(states) -> dict:
    """The attention mask core's LLM encoders put beside unpadded states (every token attends)."""
    return {"attention_mask": states.new_ones(states.shape[:2], dtype=states.dtype)}


def _qwen_image(pipe, text, device, max_sequence_length):
    """Qwen2.5-VL states after the template (as core's Qwen-Image encoder drops it); no pooled vector."""
    states, mask = pipe.encode_prompt(text, device=device, **_length(max_sequence_length))
    if mask is not None:  # one prompt has no padding; keep only real tokens all the same
        states = states[:, mask[0].bool()]
    return states, {"pooled_output": None}


def _lumina2(pipe, text, device, max_sequence_length):
    """Gemma 2 states of the prompt's tokens (the pipeline pads them; core's encoder does not)."""
    states, mask, *_ = pipe.encode_prompt(
        text, do_classifier_free_guidance=False, device=device, **_length(max_sequence_length)
    )
    states = states[:, mask[0].bool()]
    return states, {"pooled_output": None, **_all_tokens(states)}


def _z_image(pipe, text, device, max_sequence_length):
    """Qwen3 states of the prompt's tokens (ZImagePipeline gives them unpadded, one per prompt)."""
    embeds, _neg = pipe.encode_prompt(
        text, device=device, do_classifier_free_guidance=False, **_length(max_sequence_length)
    )
    states = embeds[0].unsqueeze(0)
    return states, {"pooled_output": None, **_all_tokens(states)}


def _hidream(pipe, text, device, max_sequence_length):
    """Core's HiDream layout: T5 states as the cross-attention, CLIP-L + CLIP-G pooled as
    pooled_output, and the Llama 3.1 layers (batch first: (B, layers, tokens, width)) as
    conditioning_llama3."""
    t5, _neg_t5, llama, _neg_llama, pooled, _neg_pooled = pipe.encode_prompt(
        text, device=device, do_classifier_free_guidance=False, **_length(max_sequence_length)
    )
    return t5, {"pooled_output": pooled, "conditioning_llama3": llama.movedim(0, 1)}


def _wan(pipe, text, device, max_sequence_length):
    """UMT5 states of the prompt's tokens (EOS included), zero-padded to 512 as the pipeline's
    __call__ does and as core's Wan text encoder gives them (min_length 512)."""
    states, _neg = pipe.encode_prompt(
        text, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length or 512, device=device
    )
    return states, {"pooled_output": None}


def _hunyuan_video(pipe, text, device, max_sequence_length):
    """The prompt's LLaMA states after the template, unpadded (the tokens the pipeline's mask
    keeps), as core's HunyuanVideo encoder gives them (it drops an all-ones mask)."""
    states, pooled, mask = pipe.encode_prompt(text, device=device, **_length(max_sequence_length))
    return states[:, : int(mask[0].sum())], {"pooled_output": pooled}


def _ltx(pipe, text, device, max_sequence_length):
    """T5 states padded to 128 with their mask, as core's LTXV encoder gives them (CONDITIONING's
    attention_mask)."""
    states, mask, *_ = pipe.encode_prompt(
        text, do_classifier_free_guidance=False, device=device, **_length(max_sequence_length)
    )
    return states, {"pooled_output": None, "attention_mask": mask.long()}


# Families whose prompt encoding has a function of its own: (pipe, text, device, max_sequence_length)
# -> (states, extras) in core's layout.
FAMILY_ENCODERS = {
    "qwen_image": _qwen_image,
    "lumina2": _lumina2,
    "z_image": _z_image,
    "hidream": _hidream,
    "wan": _wan,
    "hunyuan_video": _hunyuan_video,
    "ltx": _ltx,
}


def _plain(tensor):
    """float32 states on the CPU; masks keep their integer dtype (ComfyUI reads an integer mask as a mask)."""
    if tensor is None:
        return None
    tensor = tensor.detach().to("cpu")
    return (tensor.float() if tensor.is_floating_point() else tensor).clone()
