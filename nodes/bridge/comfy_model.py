"""ComfyUI's MODEL around the pipeline's denoiser: the family's own model config (latent format,
model sampling, shift) from comfy.supported_models, get_model() without creating ComfyUI's network,
the family adapter as its diffusion_model, and a ModelPatcher whose size is the real bytes.

Memory, the ComfyUI way: ComfyUI's model management loads, offloads and frees this MODEL through
its patcher. Partial (layer-by-layer) loading patches ComfyUI's own Linear/Conv layers, which a
diffusers module (quantized or not) does not have: the patcher moves the module whole, and says so
when ComfyUI asked for less. Weight patches (core LoRA nodes) are refused: the weights are the
pack's (quantized) tensors; Apply LoRA puts LoRAs on them.
"""

from __future__ import annotations

import functools
import logging

from ...resolver.keep import tensor_bytes
from ...resolver.run import denoiser_of, diffusers_context, family_of
from .adapters import ADAPTERS, TO_COMFY_NODE

# (importing a family's module also registers its adapter in ADAPTERS)
from .hidream import hidream_config
from .hunyuan_video import hunyuan_video_config
from .ltx import ltx_config
from .lumina import lumina2_config, z_image_config
from .qwen_image import qwen_image_config
from .wan import wan_config

log = logging.getLogger("pipequant")

LORA_REFUSED = (
    f"PipeQuant: the MODEL from '{TO_COMFY_NODE}' holds the pipeline's own (quantized) diffusers weights, which "
    "ComfyUI's weight patches (LoraLoaderModelOnly, LoraLoader, model merging, checkpoint saving) cannot change. "
    f"Put the LoRA on the pipeline with PipeQuant's 'Apply LoRA' node before '{TO_COMFY_NODE}'."
)


def offloaded(module) -> bool:
    """Whether the pipeline's own offload (accelerate / diffusers hooks) moves this module."""
    return any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook") for m in module.modules())


def module_device(module):
    import torch

    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def move_whole(module, device, what: str) -> None:
    """Move a (possibly quantized) module in one piece, outside ComfyUI's inference mode."""
    import torch

    if device is None or offloaded(module):
        return
    device = torch.device(device)
    current = module_device(module)
    if current.type == device.type and (device.index is None or current.index == device.index):
        return
    with diffusers_context():
        module.to(device)
    log.info("PipeQuant: moved %s whole to %s", what, device)


@functools.cache
def patcher_class():
    import comfy.model_patcher as mp
    import comfy.utils

    class PipeQuantModelPatcher(mp.ModelPatcher):
        """A ModelPatcher that moves its module whole and refuses weight patches."""

        pipequant_what = "the model"

        def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
            if patches:
                raise RuntimeError(LORA_REFUSED)
            return []

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            with self.use_ejected():
                if not full_load and 0 < lowvram_model_memory < self.size:
                    log.info(
                        "PipeQuant: ComfyUI asked to load %s partially (%.1f of %.1f MB); a diffusers module "
                        "has no ComfyUI layers to split, so it is loaded whole",
                        self.pipequant_what,
                        lowvram_model_memory / 1024**2,
                        self.size / 1024**2,
                    )
                move_whole(self.model, device_to, self.pipequant_what)
                self.model.model_lowvram = False
                self.model.lowvram_patch_counter = 0
                self.model.device = device_to
                self.model.model_loaded_weight_memory = self.size
                self.model.current_weight_patches_uuid = self.patches_uuid
                for callback in self.get_all_callbacks(mp.CallbacksMP.ON_LOAD):
                    callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            self.eject_model()
            if unpatch_weights:
                if device_to is not None:
                    move_whole(self.model, device_to, self.pipequant_what)
                    self.model.device = device_to
                self.model.model_loaded_weight_memory = 0
                self.model.current_weight_patches_uuid = None
            for key in list(self.object_patches_backup):
                comfy.utils.set_attr(self.model, key, self.object_patches_backup[key])
            self.object_patches_backup.clear()

        def partially_unload(self, device_to, memory_to_free=0):
            freed = self.model.model_loaded_weight_memory
            if freed == 0 or memory_to_free <= 0:
                return 0
            log.info("PipeQuant: offloading %s whole (%.1f MB) for ComfyUI", self.pipequant_what, freed / 1024**2)
            move_whole(self.model, device_to, self.pipequant_what)
            self.model.device = device_to
            self.model.model_loaded_weight_memory = 0
            return freed

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            before = self.model.model_loaded_weight_memory
            self.patch_model(device_to, lowvram_model_memory=0, load_weights=True)
            return self.model.model_loaded_weight_memory - before

    return PipeQuantModelPatcher


def _refuse_weight_patching(*args, **kwargs):
    raise RuntimeError(LORA_REFUSED)


# -- the model config per family ----------------------------------------------------------------
# Families whose config lives in their own module: family -> (denoiser, scheduler) -> config.
FAMILY_CONFIGS = {
    "qwen_image": qwen_image_config,
    "lumina2": lumina2_config,
    "z_image": z_image_config,
    "hidream": hidream_config,
    "wan": wan_config,
    "hunyuan_video": hunyuan_video_config,
    "ltx": ltx_config,
}


def _config(family: str, denoiser, scheduler):
    import comfy.supported_models as sm

    if family in FAMILY_CONFIGS:
        return FAMILY_CONFIGS[family](denoiser, scheduler)
    cfg = denoiser.config
    sched = getattr(scheduler, "config", {}) or {}
    if family == "flux":
        in_ch = cfg.in_channels // 4
        unet = {
            "image_model": "flux",
            "guidance_embed": bool(cfg.guidance_embeds),
            "in_channels": in_ch,
            "out_channels": (cfg.out_channels or cfg.in_channels) // 4,
        }
        config_cls = sm.Flux if cfg.guidance_embeds else sm.FluxSchnell
    elif family == "chroma":
        unet = {
            "image_model": "chroma",
            "in_channels": cfg.in_channels // 4,
            "out_channels": (cfg.out_channels or cfg.in_channels) // 4,
        }
        config_cls = sm.Chroma
    elif family == "sd3":
        unet = {"in_channels": cfg.in_channels, "pos_embed_scaling_factor": None}
        config_cls = sm.SD3
    elif family == "sdxl":
        unet = dict(sm.SDXL.unet_config, in_channels=cfg.in_channels, context_dim=cfg.cross_attention_dim)
        unet["adm_in_channels"] = cfg.projection_class_embeddings_input_dim
        config_cls = sm.SDXL
    else:
        unet = dict(sm.SD15.unet_config, in_channels=cfg.in_channels, context_dim=cfg.cross_attention_dim)
        config_cls = sm.SD15
    unet["disable_unet_model_creation"] = True  # the network is the pipeline's diffusers module
    config = config_cls(unet)
    config.set_inference_dtype(denoiser.dtype, None)
    if family == "sd3" and "shift" in sched:
        config.sampling_settings["shift"] = float(sched["shift"])
    if family in ("sd1", "sdxl") and sched.get("beta_schedule") == "scaled_linear":
        config.sampling_settings["linear_start"] = float(sched.get("beta_start", 0.00085))
        config.sampling_settings["linear_end"] = float(sched.get("beta_end", 0.012))
    return config


def _match_latent_format(config, vae) -> None:
    """The latent format's scale/shift are the pipeline VAE's own (they match the family's for
    real checkpoints; tiny or fine-tuned VAEs may differ)."""
    vcfg = getattr(vae, "config", None)
    if vcfg is None:
        return
    scale = getattr(vcfg, "scaling_factor", None)
    shift = getattr(vcfg, "shift_factor", None)
    if scale is not None and scale != config.latent_format.scale_factor:
        config.latent_format.scale_factor = float(scale)
    if shift is not None and shift != getattr(config.latent_format, "shift_factor", 0.0):
        config.latent_format.shift_factor = float(shift)
    # Wan-style VAEs (Wan, Qwen-Image): core's Wan 2.1 latent format normalises per channel with
    # the VAE's mean and std, the pipeline VAE's own config values.
    fmt = config.latent_format
    mean, std = getattr(vcfg, "latents_mean", None), getattr(vcfg, "latents_std", None)
    if mean is not None and std is not None and hasattr(fmt, "latents_mean"):
        shape = (1, len(mean)) + (1,) * (fmt.latents_mean.ndim - 2)
        fmt.latents_mean = _tensor(mean).view(shape)
        fmt.latents_std = _tensor(std).view(shape)


def _match_size_embedding(model, cfg) -> None:
    """ComfyUI's SDXL embeds each size condition in 256 sinusoids (its `y`), the width SDXL's UNet
    takes; a UNet with another addition_time_embed_dim gets ComfyUI's embedder at its width (the
    same sinusoids as diffusers' add_time_proj), so `y` fits its add_embedding."""
    width = getattr(cfg, "addition_time_embed_dim", None)
    if width and width != 256 and hasattr(model, "embedder"):
        from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

        model.embedder = Timestep(width)


def _tensor(values):
    import torch

    return torch.tensor([float(v) for v in values])


def build_model(result, model_management, component: str | None = None):
    """The MODEL (a PipeQuantModelPatcher) for a loaded pipeline of a mapped family; `component`:
    another denoiser of the pipeline than its first (Wan 2.2 A14B's transformer_2)."""
    import comfy.model_base as mb

    pipe = result.pipeline
    family = family_of(pipe)
    denoiser = getattr(pipe, component) if component else denoiser_of(pipe)
    config = _config(family, denoiser, getattr(pipe, "scheduler", None))
    _match_latent_format(config, getattr(pipe, "vae", None))
    model = config.get_model({})
    if family in ("sd1", "sdxl") and getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction":
        model.model_type = mb.ModelType.V_PREDICTION
        model.model_sampling = mb.model_sampling(config, mb.ModelType.V_PREDICTION)
    if family == "sdxl":
        _match_size_embedding(model, denoiser.config)
    model.diffusion_model = ADAPTERS[family](result, denoiser)
    model.state_dict = _refuse_weight_patching  # core LoRA key mapping reads it first: refuse there, clearly
    size = tensor_bytes(denoiser)
    here = module_device(denoiser)
    if offloaded(denoiser):  # the pipeline's own offload hooks move it: ComfyUI must not
        load = offload = here
        log.info("PipeQuant: %s follows the pipeline's own offload; ComfyUI sees it on %s", family, here)
    else:
        load, offload = model_management.get_torch_device(), model_management.unet_offload_device()
    model.device = here
    patcher = patcher_class()(model, load_device=load, offload_device=offload, size=size)
    part = component or ("unet" if family in ("sd1", "sdxl") else "transformer")
    patcher.pipequant_what = f"{result.plan.model.folder.name}/{part}"
    return patcher
