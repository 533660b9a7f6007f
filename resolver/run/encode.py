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
    "SD3Transformer2DModel": "sd3",
    "UNet2DConditionModel": "sd1",  # "sdxl" when the UNet takes text_time embeddings (below)
}
FAMILY_TITLES = {
    "flux": "FLUX.1",
    "chroma": "Chroma",
    "sd3": "Stable Diffusion 3 / 3.5",
    "sdxl": "SDXL",
    "sd1": "Stable Diffusion 1.x",
}


DENOISER_SLOTS = ("transformer", "unet")  # where the bridge looks for the denoiser, loaded or on disk


def denoiser_of(pipe):
    """The pipeline's denoiser module (transformer or unet), or None."""
    for name in DENOISER_SLOTS:
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def denoiser_family(class_name: str | None, config=None) -> str | None:
    """Which mapped family a denoiser is, from its class name and config alone (model_index.json and
    the denoiser's config.json say it: no weights read), or None. The one rule: `family_of` (a loaded
    pipeline) and `model_family` (a folder, before Run) both ask it."""
    family = FAMILY_OF_DENOISER.get(class_name) if isinstance(class_name, str) else None
    settings = config if hasattr(config, "get") else {}
    if family == "sd1" and settings.get("addition_embed_type") == "text_time":
        family = "sdxl"
    return family


def family_of(pipe) -> str | None:
    """Which mapped family the pipeline is ("flux", "sd3", "sdxl", "sd1"), or None."""
    denoiser = denoiser_of(pipe)
    if denoiser is None:
        return None
    return denoiser_family(type(denoiser).__name__, getattr(denoiser, "config", None))


def model_family(model) -> tuple[str | None, str | None]:
    """(family or None, denoiser class name or None) of a pipeline folder as `files.inspect_model`
    reads it (its ModelInfo): the bridge's verdict before anything loads."""
    for name in DENOISER_SLOTS:
        info = model.components.get(name)
        if info is not None:
            return denoiser_family(info.class_name, info.config_dict), info.class_name
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
        if family == "flux":
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


def _plain(tensor):
    return None if tensor is None else tensor.detach().to("cpu").float().clone()
