"""HunyuanVideo text to video in ComfyUI's graph: the adapter around diffusers'
HunyuanVideoTransformer3DModel under ComfyUI's HunyuanVideo config, and its video VAE.

ComfyUI calls with the (B, 16, T, H, W) latent, the timestep (0..1000), the LLaMA states (template
tokens cropped, as its own encoder gives them and Encode Prompt with Pipeline does), the CLIP pooled
vector as `y`, the embedded guidance (6.0 unless FluxGuidance sets it) and an attention mask only
when the states are padded. diffusers' module takes the same tensors; its guidance is scaled by
1000 (HunyuanVideoPipeline multiplies it; ComfyUI's embedder does the same inside).
"""

from __future__ import annotations

import torch

from ...resolver.run import diffusers_context
from .adapters import ADAPTERS, UNSUPPORTED_COND, DenoiserAdapter
from .video_vae import video_vae
from .wan import pad_to_patch

HUNYUAN_VIDEO_VAE = "AutoencoderKLHunyuanVideo"
DEFAULT_GUIDANCE = 6.0  # comfy.model_base.HunyuanVideo.extra_conds' default


class HunyuanVideoAdapter(DenoiserAdapter):
    family = "HunyuanVideo"

    def forward(
        self,
        x,
        timestep,
        context,
        y=None,
        txt_byt5=None,
        guidance=None,
        attention_mask=None,
        guiding_frame_index=None,
        ref_latent=None,
        disable_time_r=False,
        control=None,
        transformer_options={},
        **kwargs,
    ):
        self._prepare(control, kwargs, allowed=("attention_mask",), transformer_options=transformer_options)
        for key, value, what in (
            ("guiding_frame_index", guiding_frame_index, "HunyuanVideo image to video"),
            ("ref_latent", ref_latent, "a reference latent"),
            ("txt_byt5", txt_byt5, "a ByT5 glyph encoder"),
        ):
            if value is not None:
                raise RuntimeError(UNSUPPORTED_COND.format(key=key, what=what, family=self.family))
        cfg = self.denoiser.config
        b, _, t, h, w = x.shape
        with diffusers_context():
            xs = pad_to_patch(self._in(x), (cfg.patch_size_t, cfg.patch_size, cfg.patch_size))
            states = self._in(context)
            if attention_mask is None:
                mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
            else:
                mask = self._in(attention_mask).bool()
            if cfg.guidance_embeds:
                guidance = torch.full((b,), DEFAULT_GUIDANCE) if guidance is None else guidance.float()
                guidance = self._in(guidance * 1000.0)
            else:
                guidance = None
            out = self.denoiser(
                hidden_states=xs,
                timestep=self._in(timestep),
                encoder_hidden_states=states,
                encoder_attention_mask=mask,
                pooled_projections=self._in(y),
                guidance=guidance,
                return_dict=False,
            )[0]
            out = out[:, :, :t, :h, :w]
        return out.to(x.device)


ADAPTERS["hunyuan_video"] = HunyuanVideoAdapter  # the family's entry in the bridge's adapter registry


def hunyuan_video_config(denoiser, scheduler):
    """ComfyUI's HunyuanVideo config (HunyuanVideo latents, discrete flow sampling) with the
    pipeline scheduler's shift."""
    import comfy.supported_models as sm

    from .wan import scheduler_shift

    cfg = denoiser.config
    unet = {
        "image_model": "hunyuan_video",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels,
        "guidance_embed": bool(cfg.guidance_embeds),
        "disable_unet_model_creation": True,  # the network is the pipeline's diffusers module
    }
    config = sm.HunyuanVideo(unet)
    config.set_inference_dtype(denoiser.dtype, None)
    shift = scheduler_shift(getattr(scheduler, "config", {}) or {})
    if shift is not None:
        config.sampling_settings["shift"] = shift
    return config


def is_hunyuan_video_vae(vae) -> bool:
    return type(vae).__name__ == HUNYUAN_VIDEO_VAE


def hunyuan_video_vae(vae, name: str):
    """ComfyUI's VAE over the pipeline's AutoencoderKLHunyuanVideo: (B, 16, 1 + T/4, H/8, W/8)."""
    cfg = vae.config
    return video_vae(
        vae,
        name,
        spatial=cfg.spatial_compression_ratio,
        temporal=cfg.temporal_compression_ratio,
        latent_channels=cfg.latent_channels,
        width=cfg.block_out_channels[0] / 96,
    )
