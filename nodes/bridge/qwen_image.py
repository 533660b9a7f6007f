"""Qwen-Image into ComfyUI: core's QwenImage config (Wan 2.1 latent format, FLUX-style sampling),
an adapter around the pipeline's own QwenImageTransformer2DModel, and the pipeline's Wan-style
AutoencoderKLQwenImage as a ComfyUI VAE for image latents (wan.py's video VAE, one frame).

ComfyUI hands a Qwen-Image model 5-D latents (B, 16, 1, H, W): EmptySD3LatentImage's 4-D latent
gets its frame axis from KSampler (comfy.sample.fix_empty_latent_channels), and the VAE decodes
(B, 16, T, H, W) like core's Wan VAE. The timestep is sigma (0..1), as QwenImagePipeline hands
`timestep / 1000` to its transformer.
"""

from __future__ import annotations

import logging

import torch

from ...resolver.run import diffusers_context
from .adapters import DenoiserAdapter, pack_latents, unpack_latents

log = logging.getLogger("pipequant")


class QwenImageAdapter(DenoiserAdapter):
    """ComfyUI's (B, 16, 1, H, W) latent <-> diffusers' 2x2-packed tokens and img_shapes (the
    transformer builds its centred RoPE from them, as core's own Qwen-Image network does)."""

    family = "Qwen-Image"

    def forward(
        self,
        x,
        timesteps,
        context,
        attention_mask=None,
        guidance=None,
        ref_latents=None,
        control=None,
        transformer_options={},
        **kwargs,
    ):
        extra = dict(kwargs, ref_latents=ref_latents)
        self._prepare(control, extra, transformer_options=transformer_options)
        frames = x.ndim == 5
        latent = x[:, :, 0] if frames else x
        b, c, h, w = latent.shape
        pad_h, pad_w = (-h) % 2, (-w) % 2
        with diffusers_context():
            xs = self._in(latent)
            if pad_h or pad_w:
                xs = torch.nn.functional.pad(xs, (0, pad_w, 0, pad_h), mode="circular")
            h2, w2 = xs.shape[2] // 2, xs.shape[3] // 2
            mask = None
            if attention_mask is not None and not bool(attention_mask.all()):
                mask = self._in(attention_mask)
            if not getattr(self.denoiser.config, "guidance_embeds", False):
                guidance = None
            out = self.denoiser(
                hidden_states=pack_latents(xs),
                encoder_hidden_states=self._in(context),
                encoder_hidden_states_mask=mask,
                timestep=self._in(timesteps),
                img_shapes=[[(1, h2, w2)]] * b,
                guidance=self._in(guidance),
                return_dict=False,
            )[0]
            out = unpack_latents(out, h2, w2)[:, :, :h, :w]
        if frames:
            out = out.unsqueeze(2)
        return out.to(x.device)


def qwen_image_config(denoiser, scheduler):
    """Core's QwenImage model config, without ComfyUI's own network."""
    import comfy.supported_models as sm

    cfg = denoiser.config
    unet = {
        "image_model": "qwen_image",
        "in_channels": cfg.in_channels // 4,
        "out_channels": cfg.out_channels or cfg.in_channels // 4,
        "disable_unet_model_creation": True,  # the network is the pipeline's diffusers module
    }
    config = sm.QwenImage(unet)
    config.set_inference_dtype(denoiser.dtype, None)
    return config
