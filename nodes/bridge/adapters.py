"""The diffusion_model ComfyUI calls, one adapter per family, around the pipeline's own diffusers
denoiser: ComfyUI's call (x, timestep, context, y, guidance, control, transformer_options, ...) in,
the diffusers module's call inside, ComfyUI's latent layout out.

Every call runs in the pack's runtime context (outside ComfyUI's inference mode, no autograd) with
exactly the LoRA stack of the pipeline object it was built from. No ComfyUI import: the adapters
are plain torch modules (the exactness tests call them without ComfyUI as well).
"""

from __future__ import annotations

import torch

from ...resolver.run import activate, diffusers_context

TO_COMFY_NODE = "Pipeline to ComfyUI"
CONTROL_REFUSED = (
    "PipeQuant: ComfyUI ControlNet residuals are not mapped onto a diffusers {family} model from "
    f"'{TO_COMFY_NODE}'; remove the ControlNet apply node (or use a ComfyUI checkpoint for ControlNet)."
)
PATCHES_REFUSED = (
    "PipeQuant: ComfyUI model patches ({names}: FreeU, PAG, skip-layer guidance, attention patches...) reach "
    "inside ComfyUI's own {family} network, which a diffusers model from "
    f"'{TO_COMFY_NODE}' does not have; remove the patch node (it would otherwise be ignored)."
)
UNSUPPORTED_COND = (
    "PipeQuant: '{key}' conditioning (from {what}) is not mapped onto a diffusers {family} model from "
    f"'{TO_COMFY_NODE}'; remove the node that adds it."
)


class DenoiserAdapter(torch.nn.Module):
    """Holds the diffusers denoiser as a submodule (so ComfyUI's .to() and state_dict see it)."""

    family = ""

    def __init__(self, result, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self._result = result  # the LoadResult: which LoRA stack this MODEL stands for

    @property
    def dtype(self):
        return self.denoiser.dtype

    def _prepare(self, control, kwargs, allowed=(), transformer_options=None):
        if control is not None:
            raise RuntimeError(CONTROL_REFUSED.format(family=self.family))
        options = transformer_options or {}
        names = sorted(
            f"{group}.{name}"
            for group in ("patches", "patches_replace")
            for name, entries in (options.get(group) or {}).items()
            if entries
        )
        if names:
            raise RuntimeError(PATCHES_REFUSED.format(names=", ".join(names), family=self.family))
        for key, what in (("ref_latents", "ReferenceLatent / Kontext"), ("attention_mask", "a masked prompt")):
            if key not in allowed and kwargs.get(key) is not None:
                raise RuntimeError(UNSUPPORTED_COND.format(key=key, what=what, family=self.family))
        if self._result is not None:
            activate(self._result)

    def _device(self):
        for p in self.denoiser.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

    def _in(self, t):
        """A plain (non-inference) copy on the denoiser's device: ComfyUI's tensors are inference
        tensors, which the quantized backends must not update in place."""
        return None if t is None else t.to(self._device()).clone()


class FluxAdapter(DenoiserAdapter):
    """FLUX.1: ComfyUI's (B, 16, H, W) latent <-> diffusers' 2x2-packed tokens + position ids."""

    family = "FLUX"

    def forward(self, x, timestep, context, y=None, guidance=None, control=None, transformer_options={}, **kwargs):
        self._prepare(control, kwargs, transformer_options=transformer_options)
        b, c, h, w = x.shape
        pad_h, pad_w = (-h) % 2, (-w) % 2
        with diffusers_context():
            xs = self._in(x)
            if pad_h or pad_w:
                xs = torch.nn.functional.pad(xs, (0, pad_w, 0, pad_h), mode="circular")
            h2, w2 = xs.shape[2] // 2, xs.shape[3] // 2
            packed = pack_latents(xs)
            img_ids = latent_ids(h2, w2, packed.device, packed.dtype)
            txt_ids = torch.zeros(context.shape[1], 3, device=packed.device, dtype=packed.dtype)
            if not self.denoiser.config.guidance_embeds:
                guidance = None
            elif guidance is None:
                guidance = torch.full((b,), 3.5)
            out = self.denoiser(
                hidden_states=packed,
                encoder_hidden_states=self._in(context),
                pooled_projections=self._in(y),
                timestep=self._in(timestep),
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=self._in(guidance),
                return_dict=False,
            )[0]
            out = unpack_latents(out, h2, w2)[:, :, :h, :w]
        return out.to(x.device)


class ChromaAdapter(DenoiserAdapter):
    """Chroma: FLUX's packing; no pooled vector; guidance is fixed in the model (ComfyUI passes 0)."""

    family = "Chroma"

    def forward(self, x, timestep, context, guidance=None, control=None, transformer_options={}, **kwargs):
        self._prepare(control, kwargs, transformer_options=transformer_options)
        b, c, h, w = x.shape
        pad_h, pad_w = (-h) % 2, (-w) % 2
        with diffusers_context():
            xs = self._in(x)
            if pad_h or pad_w:
                xs = torch.nn.functional.pad(xs, (0, pad_w, 0, pad_h), mode="circular")
            h2, w2 = xs.shape[2] // 2, xs.shape[3] // 2
            packed = pack_latents(xs)
            out = self.denoiser(
                hidden_states=packed,
                encoder_hidden_states=self._in(context),
                timestep=self._in(timestep),
                img_ids=latent_ids(h2, w2, packed.device, packed.dtype),
                txt_ids=torch.zeros(context.shape[1], 3, device=packed.device, dtype=packed.dtype),
                return_dict=False,
            )[0]
            out = unpack_latents(out, h2, w2)[:, :, :h, :w]
        return out.to(x.device)


def pack_latents(x):
    """(B, C, H, W) -> (B, H/2 * W/2, C*4), the order of FluxPipeline._pack_latents."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens, h2: int, w2: int):
    b, _, cp = tokens.shape
    c = cp // 4
    return tokens.view(b, h2, w2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h2 * 2, w2 * 2)


def latent_ids(h2: int, w2: int, device, dtype):
    """FluxPipeline._prepare_latent_image_ids: (row, column) of each packed token."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] += torch.arange(h2)[:, None]
    ids[..., 2] += torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


class SD3Adapter(DenoiserAdapter):
    """SD3 / 3.5: same latent layout and timestep scale (0..1000) on both sides."""

    family = "SD3"

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        self._prepare(control, kwargs, transformer_options=transformer_options)
        with diffusers_context():
            out = self.denoiser(
                hidden_states=self._in(x),
                encoder_hidden_states=self._in(context),
                pooled_projections=self._in(y),
                timestep=self._in(timesteps),
                return_dict=False,
            )[0]
        return out.to(x.device)


class UNetAdapter(DenoiserAdapter):
    """SD1.x and SDXL UNets. SDXL: ComfyUI's `y` is the pooled text vector followed by the six size
    conditions already embedded (sinusoidal, 256 each) -- exactly what diffusers' UNet builds from
    text_embeds + time_ids before add_embedding. So the embedded part goes in as time_ids and
    add_time_proj passes it through for the call."""

    family = "SD"

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        self._prepare(control, kwargs, transformer_options=transformer_options)
        added, hook = None, None
        with diffusers_context():
            if getattr(self.denoiser.config, "addition_embed_type", None) == "text_time":
                if y is None:
                    raise RuntimeError("PipeQuant: an SDXL model needs the pooled prompt (conditioning without it)")
                pooled = pooled_width(self.denoiser.config)
                ys = self._in(y)
                added = {"text_embeds": ys[:, :pooled], "time_ids": ys[:, pooled:]}
                hook = self.denoiser.add_time_proj.register_forward_hook(_pass_through)
            try:
                out = self.denoiser(
                    self._in(x),
                    self._in(timesteps),
                    encoder_hidden_states=self._in(context),
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
            finally:
                if hook is not None:
                    hook.remove()
        return out.to(x.device)


def pooled_width(config) -> int:
    return config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim


def _pass_through(module, inputs, output):
    """add_time_proj hook: the time ids are embedded already (ComfyUI's adm)."""
    return inputs[0].to(output.dtype)


ADAPTERS = {"flux": FluxAdapter, "chroma": ChromaAdapter, "sd3": SD3Adapter, "sdxl": UNetAdapter, "sd1": UNetAdapter}


def _in_module(module: str, name: str):
    """An adapter that lives in its family's own module (which imports this one): imported when
    the first MODEL of that family is built."""

    def make(result, denoiser):
        import importlib

        return getattr(importlib.import_module(f".{module}", __package__), name)(result, denoiser)

    return make


ADAPTERS.update(
    qwen_image=_in_module("qwen_image", "QwenImageAdapter"),
    lumina2=_in_module("lumina", "Lumina2Adapter"),
    z_image=_in_module("lumina", "ZImageAdapter"),
    hidream=_in_module("hidream", "HiDreamAdapter"),
)
