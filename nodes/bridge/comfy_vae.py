"""ComfyUI's VAE from the pipeline's VAE.

Where the diffusers VAE has the architecture ComfyUI knows (the SD/SDXL/SD3/FLUX AutoencoderKL:
128-256-512-512 channels, 2 layers per block, 32 norm groups), ComfyUI builds its own VAE from
the state dict (it converts diffusers keys itself): an independent copy, owned by ComfyUI. Any
other VAE (tiny test pipelines, quantized or unusual ones) becomes a comfy.sd.VAE whose
first-stage model is the pipeline's own module, moved whole by the pack's patcher.
"""

from __future__ import annotations

import logging

import torch

from ...resolver.keep import tensor_bytes
from ...resolver.run import diffusers_context
from .comfy_model import module_device, patcher_class

log = logging.getLogger("pipequant")
COMFY_LAYOUT = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32}


class DiffusersVAEStage(torch.nn.Module):
    """ComfyUI's first-stage interface (encode to the latent mean, decode to -1..1) over a
    diffusers AutoencoderKL."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def _in(self, t):
        return t.to(device=module_device(self.vae), dtype=self.vae.dtype).clone()

    def encode(self, x):
        with diffusers_context():
            return self.vae.encode(self._in(x)).latent_dist.mode()

    def decode(self, z):
        with diffusers_context():
            return self.vae.decode(self._in(z)).sample


def comfy_layout(vae) -> bool:
    """Whether ComfyUI's own VAE architecture can hold these weights (plain tensors only)."""
    cfg = vae.config
    plain = all(type(p) in (torch.Tensor, torch.nn.Parameter) for p in vae.parameters())
    same = all(
        list(getattr(cfg, k, None) or []) == v if isinstance(v, list) else getattr(cfg, k, None) == v
        for k, v in COMFY_LAYOUT.items()
    )
    return plain and same and type(vae).__name__ == "AutoencoderKL" and cfg.in_channels == 3


def build_vae(vae, name: str):
    import comfy.sd

    from .hunyuan_video import hunyuan_video_vae, is_hunyuan_video_vae
    from .ltx import is_ltx_vae, ltx_vae
    from .wan import is_wan_vae, wan_vae

    if is_wan_vae(vae):  # video latents
        return wan_vae(vae, name)
    if is_hunyuan_video_vae(vae):
        return hunyuan_video_vae(vae, name)
    if is_ltx_vae(vae):
        return ltx_vae(vae, name)
    if comfy_layout(vae):
        with diffusers_context():
            state = {k: v.detach().to("cpu").clone() for k, v in vae.state_dict().items()}
        return comfy.sd.VAE(sd=state)
    return _wrapped_vae(vae, name)


def _wrapped_vae(vae, name: str, ratio: int | None = None, latent_channels: int | None = None, stage=None):
    """ratio / latent_channels: for VAEs whose config does not say them as AutoencoderKL's does;
    stage: a DiffusersVAEStage subclass for VAEs whose latents ComfyUI keeps otherwise (LTX)."""
    import comfy.model_management as mm
    import comfy.sd

    quiet = _Drop("No VAE weights detected")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        out = comfy.sd.VAE(sd={})  # ComfyUI's defaults for every attribute, no network of its own
    finally:
        root.removeFilter(quiet)
    cfg = vae.config
    ratio = ratio or 2 ** (len(cfg.block_out_channels) - 1)
    out.downscale_ratio = out.upscale_ratio = ratio
    out.latent_channels = latent_channels or cfg.latent_channels
    out.first_stage_model = (stage or DiffusersVAEStage)(vae).eval()
    out.device = mm.vae_device()
    out.vae_dtype = vae.dtype  # the pipeline's module is shared: never cast it
    out.working_dtypes = [vae.dtype]
    out.output_device = mm.intermediate_device()
    out.first_stage_model.device = module_device(vae)
    patcher = patcher_class()(
        out.first_stage_model, load_device=out.device, offload_device=mm.vae_offload_device(), size=tensor_bytes(vae)
    )
    patcher.pipequant_what = f"{name}/vae"
    out.patcher = patcher
    log.info("PipeQuant: VAE of %s is used as the pipeline's own module (ComfyUI has no layout for it)", name)
    return out


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()
