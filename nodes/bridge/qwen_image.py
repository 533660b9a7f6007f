"""Qwen-Image into ComfyUI: core's QwenImage config (Wan 2.1 latent format, FLUX-style sampling),
an adapter around the pipeline's own QwenImageTransformer2DModel, and the pipeline's Wan-style
AutoencoderKLQwenImage as a ComfyUI VAE for image latents.

ComfyUI hands a Qwen-Image model 5-D latents (B, 16, 1, H, W): EmptySD3LatentImage's 4-D latent
gets its frame axis from KSampler (comfy.sample.fix_empty_latent_channels), and the VAE decodes
(B, 16, T, H, W) like core's Wan VAE. The timestep is sigma (0..1), as QwenImagePipeline hands
`timestep / 1000` to its transformer.
"""

from __future__ import annotations

import logging

import torch

from ...resolver.keep import tensor_bytes
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


def match_latent_statistics(config, vae) -> None:
    """Core's Wan 2.1 latent format normalises per channel with the VAE's mean and std, which are
    the pipeline VAE's own config values (equal to Wan 2.1's for the real Qwen-Image VAE)."""
    vcfg = getattr(vae, "config", None)
    mean, std = getattr(vcfg, "latents_mean", None), getattr(vcfg, "latents_std", None)
    fmt = config.latent_format
    if mean is None or std is None or not hasattr(fmt, "latents_mean"):
        return
    shape = (1, len(mean)) + (1,) * (fmt.latents_mean.ndim - 2)
    fmt.latents_mean = torch.tensor(mean, dtype=torch.float32).view(shape)
    fmt.latents_std = torch.tensor(std, dtype=torch.float32).view(shape)


class QwenVAEStage(torch.nn.Module):
    """ComfyUI's first-stage interface over AutoencoderKLQwenImage: (B, C, T, H, W) in and out,
    pixels in -1..1, the latent's mean on encode (what core's Wan VAE returns)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def _in(self, t):
        from .comfy_model import module_device

        return t.to(device=module_device(self.vae), dtype=self.vae.dtype).clone()

    def encode(self, x):
        with diffusers_context():
            return self.vae.encode(self._in(x)).latent_dist.mode()

    def decode(self, z):
        with diffusers_context():
            return self.vae.decode(self._in(z)).sample


def build_qwen_vae(vae, name: str):
    """A comfy.sd.VAE whose first stage is the pipeline's own VAE module (one copy, moved whole by
    the pack's patcher), with core's Wan 2.1 VAE geometry: 8x spatial, 4x temporal, 3-D latents."""
    import comfy.model_management as mm
    import comfy.sd

    from .comfy_model import module_device, patcher_class
    from .comfy_vae import _Drop

    quiet = _Drop("No VAE weights detected")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        out = comfy.sd.VAE(sd={})  # ComfyUI's defaults for every attribute, no network of its own
    finally:
        root.removeFilter(quiet)
    spatial = 2 ** len(vae.config.temperal_downsample)  # one halving per down stage
    out.upscale_ratio = (lambda a: max(0, a * 4 - 3), spatial, spatial)
    out.upscale_index_formula = (4, spatial, spatial)
    out.downscale_ratio = (lambda a: max(0, (a + 3) // 4), spatial, spatial)
    out.downscale_index_formula = (4, spatial, spatial)
    out.latent_dim = 3
    out.latent_channels = vae.config.z_dim
    out.first_stage_model = QwenVAEStage(vae).eval()
    out.device = mm.vae_device()
    out.vae_dtype = vae.dtype  # the pipeline's module is shared: never cast it
    out.working_dtypes = [vae.dtype]
    out.output_device = mm.intermediate_device()
    out.first_stage_model.device = module_device(vae)
    out.memory_used_encode = lambda shape, dtype: 6000 * shape[3] * shape[4] * mm.dtype_size(dtype)
    out.memory_used_decode = lambda shape, dtype: 7000 * shape[3] * shape[4] * 64 * mm.dtype_size(dtype)
    patcher = patcher_class()(
        out.first_stage_model, load_device=out.device, offload_device=mm.vae_offload_device(), size=tensor_bytes(vae)
    )
    patcher.pipequant_what = f"{name}/vae"
    out.patcher = patcher
    log.info("PipeQuant: the Qwen-Image VAE of %s is used as the pipeline's own module", name)
    return out
