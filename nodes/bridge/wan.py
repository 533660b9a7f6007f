"""Wan 2.1 and Wan 2.2 A14B text-to-video in ComfyUI's graph: the adapter around diffusers'
WanTransformer3DModel, ComfyUI's WAN21_T2V model config, the two Wan 2.2 experts, and the video VAE.

ComfyUI loads Wan 2.2 A14B's experts as two Wan 2.1-shaped models (16-channel Wan21 latents):
core's own Wan 2.2 graph samples the high-noise expert (`transformer`) for the first steps with one
KSamplerAdvanced and the low-noise expert (`transformer_2`) for the rest with a second one. So each
expert becomes its own MODEL (Pipeline to ComfyUI's `expert` input), and the step where the
pipeline's `boundary_ratio` falls is logged for the user's sampler settings.

ComfyUI's own Wan VAE holds the original Wan checkpoint layout at full size only, and a converted
copy would be a second copy of the VAE beside the pipeline's (which its own Sampler keeps using): the
pipeline's AutoencoderKLWan is handed over as the wrapped module (one copy, moved whole by the pack's
patcher).
"""

from __future__ import annotations

import torch

from ...resolver.run import diffusers_context
from .adapters import ADAPTERS, UNSUPPORTED_COND, DenoiserAdapter
from .video_vae import video_vae

# Qwen-Image's VAE is Wan 2.1's architecture (same config keys, 8x spatial, 4x temporal, per-channel
# mean/std): both are handed over as this video VAE.
WAN_VAES = ("AutoencoderKLWan", "AutoencoderKLQwenImage")


class WanAdapter(DenoiserAdapter):
    """Wan text-to-video: ComfyUI's (B, C, T, H, W) latent, timestep (0..1000) and UMT5 states go to
    diffusers' WanTransformer3DModel unchanged; the latent is padded to the patch size as ComfyUI's
    WanModel pads it, and the output cropped back."""

    family = "Wan"

    @property
    def patch_embedding(self):
        """ComfyUI's WAN21.concat_cond reads the input width from here (T2V: no extra channels)."""
        return self.denoiser.patch_embedding

    def forward(
        self,
        x,
        timestep,
        context,
        clip_fea=None,
        time_dim_concat=None,
        control=None,
        transformer_options={},
        **kwargs,
    ):
        self._prepare(control, kwargs, transformer_options=transformer_options)
        for key, value, what in (
            ("clip_fea", clip_fea, "CLIP vision / image to video"),
            ("time_dim_concat", time_dim_concat, "a time-concatenated latent"),
            ("reference_latent", kwargs.get("reference_latent"), "a reference image"),
        ):
            if value is not None:
                raise RuntimeError(UNSUPPORTED_COND.format(key=key, what=what, family=self.family))
        _, _, t, h, w = x.shape
        with diffusers_context():
            xs = pad_to_patch(self._in(x), self.denoiser.config.patch_size)
            out = self.denoiser(
                hidden_states=xs,
                timestep=self._in(timestep),
                encoder_hidden_states=self._in(context),
                return_dict=False,
            )[0]
            out = out[:, :, :t, :h, :w]
        return out.to(x.device)


ADAPTERS["wan"] = WanAdapter  # the family's entry in the bridge's adapter registry


def pad_to_patch(x, patch_size):
    """comfy.ldm.common_dit.pad_to_patch_size: circular padding of (T, H, W) up to the patch."""
    pad = ()
    for i, p in enumerate(patch_size):
        pad = (0, (p - x.shape[i + 2] % p) % p) + pad
    return torch.nn.functional.pad(x, pad, mode="circular") if any(pad) else x


def wan_config(denoiser, scheduler):
    """ComfyUI's WAN21_T2V config (Wan21 latents, discrete flow sampling) with the pipeline
    scheduler's shift, for a Wan 2.1 transformer or either Wan 2.2 A14B expert."""
    import comfy.supported_models as sm

    cfg = denoiser.config
    sched = getattr(scheduler, "config", {}) or {}
    unet = {
        "image_model": "wan2.1",
        "model_type": "t2v",
        "in_dim": cfg.in_channels,
        "out_dim": cfg.out_channels or cfg.in_channels,
        "dim": cfg.num_attention_heads * cfg.attention_head_dim,
        "num_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_layers,
        "disable_unet_model_creation": True,  # the network is the pipeline's diffusers module
    }
    config = sm.WAN21_T2V(unet)
    config.set_inference_dtype(denoiser.dtype, None)
    shift = scheduler_shift(sched)
    if shift is not None:
        config.sampling_settings["shift"] = shift
    return config


def scheduler_shift(sched) -> float | None:
    """The pipeline scheduler's flow shift: UniPC / DPM++ `flow_shift` (with flow sigmas) or
    FlowMatchEuler's `shift`; None where the scheduler does not shift (ComfyUI's default, 8, stays)."""
    if sched.get("use_flow_sigmas") and sched.get("flow_shift") is not None:
        return float(sched["flow_shift"])
    if "shift" in sched and not sched.get("use_dynamic_shifting"):
        return float(sched["shift"])
    return None


def boundary_note(pipe, model, steps: int = 20) -> str | None:
    """Where a Wan 2.2 A14B pipeline switches experts, in core's KSamplerAdvanced steps: diffusers
    runs `transformer` while the timestep is >= boundary_ratio * 1000, i.e. while sigma >= boundary_ratio."""
    ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
    if ratio is None or getattr(pipe, "transformer_2", None) is None:
        return None
    split = boundary_step(model.model_sampling, float(ratio), steps)
    return (
        f"PipeQuant: Wan 2.2 A14B switches experts at sigma {ratio} (boundary_ratio): with the 'simple' "
        f"scheduler and {steps} steps, run expert 'first' (high noise) for steps 0-{split} and expert 'second' "
        f"(low noise) from step {split} (KSamplerAdvanced end_at_step / start_at_step = {split})"
    )


def boundary_step(model_sampling, ratio: float, steps: int, scheduler: str = "simple") -> int:
    """How many of the schedule's steps start at sigma >= ratio (the high-noise expert's steps)."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
    return int((sigmas[:-1] >= ratio).sum())


# -- the VAE ---------------------------------------------------------------------------------------
def is_wan_vae(vae) -> bool:
    return type(vae).__name__ in WAN_VAES


def wan_vae(vae, name: str):
    """ComfyUI's VAE over the pipeline's AutoencoderKLWan: video latents (B, C, 1 + T/4, H/8, W/8),
    4k+1 frames, as ComfyUI's own Wan 2.1 VAE (whose memory estimates scale with the width, 96)."""
    cfg = vae.config
    return video_vae(
        vae,
        name,
        spatial=2 ** len(cfg.temperal_downsample),
        temporal=2 ** sum(cfg.temperal_downsample),
        latent_channels=cfg.z_dim,
        width=cfg.base_dim / 96,
    )
