"""LTX-Video (0.9.x, text to video) in ComfyUI's graph: the adapter around diffusers'
LTXVideoTransformer3DModel under ComfyUI's LTXV config, and its video VAE.

ComfyUI's LTXV model takes the (B, C, F, H, W) latent, sigma as the timestep (its FLUX-type model
sampling; the model multiplies by 1000), the T5 states with their attention mask, and a frame rate
(25 unless LTXVConditioning sets it). diffusers' module takes the latent packed into tokens and
positions scaled by (vae temporal ratio / frame rate, spatial ratio, spatial ratio) -- what
LTXPipeline passes, and ComfyUI's positions without the causal first-frame fix (its default).

ComfyUI keeps LTX latents normalized (its own VAE holds the per-channel statistics): the wrapped
VAE normalizes with the pipeline VAE's latents_mean / latents_std, as LTXPipeline does.
"""

from __future__ import annotations

import functools

import torch

from ...resolver.run import diffusers_context
from .adapters import ADAPTERS, UNSUPPORTED_COND, DenoiserAdapter
from .video_vae import video_vae

LTX_VAE = "AutoencoderKLLTXVideo"
DEFAULT_FRAME_RATE = 25  # comfy.model_base.LTXV.extra_conds' default


class LTXAdapter(DenoiserAdapter):
    family = "LTX-Video"

    def __init__(self, result, denoiser):
        super().__init__(result, denoiser)
        vae = getattr(getattr(result, "pipeline", None), "vae", None)
        self.temporal = getattr(vae, "temporal_compression_ratio", 8)
        self.spatial = getattr(vae, "spatial_compression_ratio", 32)

    def forward(
        self,
        x,
        timestep,
        context,
        attention_mask=None,
        frame_rate=DEFAULT_FRAME_RATE,
        control=None,
        transformer_options={},
        keyframe_idxs=None,
        **kwargs,
    ):
        self._prepare(control, kwargs, allowed=("attention_mask",), transformer_options=transformer_options)
        if keyframe_idxs is not None:
            raise RuntimeError(UNSUPPORTED_COND.format(key="keyframe_idxs", what="LTXV keyframes", family=self.family))
        cfg = self.denoiser.config
        b, _, f, h, w = x.shape
        p, pt = cfg.patch_size, cfg.patch_size_t
        with diffusers_context():
            tokens = pack_latents(self._in(x), p, pt)
            states = self._in(context)
            if attention_mask is None:
                mask = torch.ones(states.shape[:2], device=states.device)
            else:
                mask = self._in(attention_mask).float()
            out = self.denoiser(
                hidden_states=tokens,
                encoder_hidden_states=states,
                timestep=self._in(timestep.float() * 1000.0),
                encoder_attention_mask=mask,
                num_frames=f // pt,
                height=h // p,
                width=w // p,
                rope_interpolation_scale=(self.temporal / float(frame_rate), self.spatial, self.spatial),
                return_dict=False,
            )[0]
            out = unpack_latents(out, f // pt, h // p, w // p, p, pt)
        return out.to(x.device)


ADAPTERS["ltx"] = LTXAdapter  # the family's entry in the bridge's adapter registry


def pack_latents(latents, p: int = 1, pt: int = 1):
    """LTXPipeline._pack_latents: (B, C, F, H, W) -> (B, F/pt * H/p * W/p, C * pt * p * p)."""
    b, c, f, h, w = latents.shape
    latents = latents.reshape(b, -1, f // pt, pt, h // p, p, w // p, p)
    return latents.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def unpack_latents(tokens, f: int, h: int, w: int, p: int = 1, pt: int = 1):
    """LTXPipeline._unpack_latents."""
    b = tokens.size(0)
    tokens = tokens.reshape(b, f, h, w, -1, pt, p, p)
    return tokens.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def ltx_config(denoiser, scheduler):
    """ComfyUI's LTXV config. Its shift stays ComfyUI's (2.37): LTXPipeline shifts by resolution
    (dynamic shifting), which core's LTXVScheduler node does on the graph."""
    import comfy.supported_models as sm

    cfg = denoiser.config
    unet = {
        "image_model": "ltxv",
        "in_channels": cfg.in_channels,
        "cross_attention_dim": cfg.cross_attention_dim,
        "disable_unet_model_creation": True,  # the network is the pipeline's diffusers module
    }
    config = sm.LTXV(unet)
    config.set_inference_dtype(denoiser.dtype, None)
    # KSampler widens an empty latent to the format's channels (128 in LTX 0.9): the model's own count.
    config.latent_format.latent_channels = cfg.in_channels // (cfg.patch_size**2 * cfg.patch_size_t)
    return config


@functools.cache
def ltx_vae_stage():
    """comfy_vae's stage with LTXPipeline's normalization: the latent ComfyUI keeps is (z - mean) /
    std (the latent format applies the scaling factor, 1.0 for LTX). Built on first use: comfy_vae
    imports the bridge's model module, which imports this one."""
    from .comfy_vae import DiffusersVAEStage

    class LTXVAEStage(DiffusersVAEStage):
        def _stats(self, z):
            shape = (1, -1, 1, 1, 1)
            return self.vae.latents_mean.view(shape).to(z), self.vae.latents_std.view(shape).to(z)

        def encode(self, x):
            z = super().encode(x)
            mean, std = self._stats(z)
            return (z - mean) / std

        def decode(self, z):
            mean, std = self._stats(z)
            with diffusers_context():
                z = self._in(z) * std.to(self.vae.dtype) + mean.to(self.vae.dtype)
                return self.vae.decode(z, None).sample

    return LTXVAEStage


def is_ltx_vae(vae) -> bool:
    return type(vae).__name__ == LTX_VAE


def ltx_vae(vae, name: str):
    """ComfyUI's VAE over the pipeline's AutoencoderKLLTXVideo. A timestep-conditioned decoder (LTX
    0.9.1+) is refused: ComfyUI's own LTX VAE decodes with its timestep, which the wrapped one lacks."""
    if vae.config.timestep_conditioning:
        raise ValueError(
            "PipeQuant: this LTX-Video VAE decodes with a timestep (LTX 0.9.1 and later), which the bridged VAE "
            "does not pass; decode with ComfyUI's own LTXV VAE (VAELoader) instead"
        )
    return video_vae(
        vae,
        name,
        spatial=vae.spatial_compression_ratio,
        temporal=vae.temporal_compression_ratio,
        latent_channels=vae.config.latent_channels,
        width=vae.config.block_out_channels[0] / 128,
        stage=ltx_vae_stage(),
    )
