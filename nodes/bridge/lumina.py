"""Lumina Image 2.0 and Z-Image into ComfyUI: core's Lumina2 config (FLUX latent format, flow
sampling with multiplier 1) and, for Z-Image, core's ZImage config where this ComfyUI has it
(newer cores: a Lumina2 subclass with shift 3) or the same thing built from Lumina2 here (0.3.64
has none). Both adapters call the pipeline's own diffusers transformer.

ComfyUI's NextDiT (both families) takes t = 1 - sigma and returns the negated prediction, exactly
what Lumina2Pipeline and ZImagePipeline do around their transformers: the adapters do the same.
"""

from __future__ import annotations

import functools

import torch

from ...resolver.run import diffusers_context
from .adapters import DenoiserAdapter


class _NextDiTAdapter(DenoiserAdapter):
    def _text(self, context, num_tokens, attention_mask):
        """The prompt's tokens and their mask as a bool (B, L); ComfyUI's num_tokens, when given,
        is the longest prompt's length in the batch."""
        ctx = self._in(context)
        if attention_mask is None:
            mask = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
        else:
            mask = attention_mask.to(ctx.device).bool()
        if num_tokens is not None:
            n = int(num_tokens)
            ctx, mask = ctx[:, :n], mask[:, :n]
        return ctx, mask

    def _padded(self, x, patch: int):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % patch, (-w) % patch
        xs = self._in(x)
        if pad_h or pad_w:
            xs = torch.nn.functional.pad(xs, (0, pad_w, 0, pad_h), mode="circular")
        return xs, h, w


class Lumina2Adapter(_NextDiTAdapter):
    """Lumina Image 2.0: (B, 16, H, W) in and out; the diffusers transformer patchifies itself."""

    family = "Lumina 2"

    def forward(
        self, x, timesteps, context, num_tokens=None, attention_mask=None, control=None, transformer_options={}, **kw
    ):
        self._prepare(control, dict(kw, attention_mask=attention_mask), ("attention_mask",), transformer_options)
        with diffusers_context():
            xs, h, w = self._padded(x, self.denoiser.config.patch_size)
            ctx, mask = self._text(context, num_tokens, attention_mask)
            out = self.denoiser(
                hidden_states=xs,
                timestep=1.0 - self._in(timesteps),
                encoder_hidden_states=ctx,
                encoder_attention_mask=mask,
                return_dict=False,
            )[0]
        return -out[:, :, :h, :w].to(x.device)


class ZImageAdapter(_NextDiTAdapter):
    """Z-Image: the diffusers transformer takes lists (one (C, 1, H, W) latent and one unpadded
    (tokens, width) prompt per sample), as ZImagePipeline hands them."""

    family = "Z-Image"

    def forward(
        self, x, timesteps, context, num_tokens=None, attention_mask=None, control=None, transformer_options={}, **kw
    ):
        self._prepare(control, dict(kw, attention_mask=attention_mask), ("attention_mask",), transformer_options)
        patch = self.denoiser.config.all_patch_size[0]
        with diffusers_context():
            xs, h, w = self._padded(x, patch)
            ctx, mask = self._text(context, num_tokens, attention_mask)
            outs = self.denoiser(
                list(xs.unsqueeze(2).unbind(0)),
                1.0 - self._in(timesteps),
                [c[m] for c, m in zip(ctx, mask)],
                patch_size=patch,
                f_patch_size=self.denoiser.config.all_f_patch_size[0],
                return_dict=False,
            )[0]
            out = torch.stack([o.float() for o in outs], dim=0).squeeze(2)
        return -out[:, :, :h, :w].to(device=x.device, dtype=x.dtype)


def _finish(config, denoiser):
    config.set_inference_dtype(denoiser.dtype, None)
    return config


def lumina2_config(denoiser, scheduler):
    """Core's Lumina2 model config, without ComfyUI's own network."""
    import comfy.supported_models as sm

    unet = {"image_model": "lumina2", "disable_unet_model_creation": True}
    return _finish(sm.Lumina2(unet), denoiser)


@functools.cache
def z_image_class():
    """Core's ZImage config where this ComfyUI has one; else its equivalent (Lumina2's network
    type and FLUX latent format, Z-Image's shift 3), as newer cores define it."""
    import comfy.supported_models as sm

    found = getattr(sm, "ZImage", None)
    if found is not None:
        return found

    class ZImage(sm.Lumina2):
        unet_config = {"image_model": "lumina2"}
        sampling_settings = {"multiplier": 1.0, "shift": 3.0}
        memory_usage_factor = 2.8
        supported_inference_dtypes = [torch.bfloat16, torch.float32]

    return ZImage


def z_image_config(denoiser, scheduler):
    unet = {"image_model": "lumina2", "disable_unet_model_creation": True}
    return _finish(z_image_class()(unet), denoiser)
