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
}


def denoiser_of(pipe):
    """The pipeline's denoiser module (transformer or unet), or None."""
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def family_of(pipe) -> str | None:
    """Which mapped family the pipeline is ("flux", "sd3", "sdxl", "sd1"), or None."""
    denoiser = denoiser_of(pipe)
    family = FAMILY_OF_DENOISER.get(type(denoiser).__name__) if denoiser is not None else None
    if family == "sd1" and getattr(denoiser.config, "addition_embed_type", None) == "text_time":
        family = "sdxl"
    if family == "wan" and not _wan_text_to_video(denoiser):
        family = None
    if family == "hunyuan_video" and getattr(denoiser.config, "image_condition_type", None):
        family = None  # HunyuanVideo image to video (latent concat / token replace)
    return family


def _wan_text_to_video(denoiser) -> bool:
    """ComfyUI's WAN21_T2V shape: 16 latent channels in and out, no CLIP image states (image to
    video and Wan 2.2 TI2V 5B's 48-channel latents are not mapped)."""
    cfg = denoiser.config
    return cfg.in_channels == (cfg.out_channels or cfg.in_channels) == 16 and not getattr(cfg, "image_dim", None)


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
        if family == "wan":
            # UMT5 states of the prompt's tokens (EOS included), zero-padded to 512 as the
            # pipeline's __call__ does and as core's Wan text encoder gives them (min_length 512).
            states, _neg = pipe.encode_prompt(
                text,
                do_classifier_free_guidance=False,
                max_sequence_length=max_sequence_length or 512,
                device=device,
            )
            extras = {"pooled_output": None}
        elif family == "hunyuan_video":
            kwargs = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
            states, pooled, mask = pipe.encode_prompt(text, device=device, **kwargs)
            # The prompt's LLaMA states after the template, unpadded (the tokens the pipeline's mask
            # keeps), as core's HunyuanVideo encoder gives them (it drops an all-ones mask).
            states = states[:, : int(mask[0].sum())]
            extras = {"pooled_output": pooled}
        elif family == "ltx":
            # T5 states padded to 128 with their mask, as core's LTXV encoder gives them
            # (CONDITIONING's attention_mask).
            kwargs = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
            states, mask, *_ = pipe.encode_prompt(text, do_classifier_free_guidance=False, device=device, **kwargs)
            extras = {"pooled_output": None, "attention_mask": mask.long()}
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


def _plain(tensor):
    """float32 states on the CPU; masks keep their integer dtype (ComfyUI reads an integer mask as a mask)."""
    if tensor is None:
        return None
    tensor = tensor.detach().to("cpu")
    return (tensor.float() if tensor.is_floating_point() else tensor).clone()
