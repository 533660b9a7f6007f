"""HiDream-I1 into ComfyUI: core's HiDream config (FLUX latent format, flow sampling on 0..1000)
and an adapter around the pipeline's own HiDreamImageTransformer2DModel.

Core's HiDream conditioning carries four encoders in three places (resolver/run/encode.py gives
the same): the T5 states as the cross-attention (`context`), CLIP-L + CLIP-G pooled as
`pooled_output` (the model's `y`), and the Llama 3.1 layers batch first as `conditioning_llama3`
(`encoder_hidden_states_llama3`, (B, layers, tokens, width); diffusers wants layers first).
Like HiDreamImagePipeline, the adapter negates the transformer's output.
"""

from __future__ import annotations

import torch

from ...resolver.run import diffusers_context
from .adapters import DenoiserAdapter


class HiDreamAdapter(DenoiserAdapter):
    family = "HiDream"

    def forward(
        self,
        x,
        t,
        y=None,
        context=None,
        encoder_hidden_states_llama3=None,
        image_cond=None,
        control=None,
        transformer_options={},
        **kwargs,
    ):
        self._prepare(control, kwargs, transformer_options=transformer_options)
        if image_cond is not None:
            raise RuntimeError(
                "PipeQuant: an image condition (HiDream E1 editing) is not mapped onto a diffusers HiDream-I1 "
                "model from 'Pipeline to ComfyUI'; remove the node that adds it."
            )
        if encoder_hidden_states_llama3 is None or y is None:
            raise RuntimeError(
                "PipeQuant: a HiDream model needs the Llama 3.1 states and the pooled CLIP vector: encode the "
                "prompt with 'Encode Prompt with Pipeline' on the same pipeline."
            )
        h, w = x.shape[-2:]
        patch = self.denoiser.config.patch_size
        pad_h, pad_w = (-h) % patch, (-w) % patch
        with diffusers_context():
            xs = self._in(x)
            if pad_h or pad_w:
                xs = torch.nn.functional.pad(xs, (0, pad_w, 0, pad_h), mode="circular")
            out = self.denoiser(
                hidden_states=xs,
                timesteps=self._in(t),
                encoder_hidden_states_t5=self._in(context),
                encoder_hidden_states_llama3=self._in(encoder_hidden_states_llama3).movedim(1, 0),
                pooled_embeds=self._in(y),
                return_dict=False,
            )[0]
        return -out[:, :, :h, :w].to(x.device)


def hidream_config(denoiser, scheduler):
    """Core's HiDream model config, without ComfyUI's own network; the shift is the pipeline
    scheduler's (core's own HiDream config leaves it at 1, for a ModelSamplingSD3 node to set)."""
    import comfy.supported_models as sm

    config = sm.HiDream({"image_model": "hidream", "disable_unet_model_creation": True})
    config.set_inference_dtype(denoiser.dtype, None)
    shift = (getattr(scheduler, "config", {}) or {}).get("shift")
    if shift is not None and not (getattr(scheduler, "config", {}) or {}).get("use_dynamic_shifting"):
        config.sampling_settings["shift"] = float(shift)
    return config
