"""ComfyUI's VAE over a pipeline's video VAE (Wan, HunyuanVideo): the pipeline's own module,
wrapped (ComfyUI's own video VAEs hold their original checkpoint layouts at full size only), with
ComfyUI's video latent geometry: (B, C, 1 + (T - 1) / temporal, H / spatial, W / spatial).
"""

from __future__ import annotations

import math
import weakref

import torch

_VAES: dict[int, tuple] = {}  # id(module) -> (weakref(module), weakref(ComfyUI VAE)): one VAE per module


def video_vae(vae, name: str, *, spatial: int, temporal: int, latent_channels: int, width: float = 1.0, stage=None):
    """The ComfyUI VAE; every node asking for the same module gets the same object (Wan 2.2's two
    experts' nodes), so the module has one patcher: one owner in ComfyUI's model management.
    width: the memory estimate's scale against ComfyUI's Wan 2.1 VAE; stage: comfy_vae._wrapped_vae's."""
    from .comfy_vae import _wrapped_vae

    known = _VAES.get(id(vae))
    if known is not None and known[0]() is vae and known[1]() is not None:
        return known[1]()
    out = _wrapped_vae(vae, name, ratio=spatial, latent_channels=latent_channels, stage=stage)
    out.latent_dim = 3
    out.upscale_ratio = (lambda a: max(0, a * temporal - (temporal - 1)), spatial, spatial)
    out.upscale_index_formula = (temporal, spatial, spatial)
    out.downscale_ratio = (lambda a: max(0, math.floor((a + temporal - 1) / temporal)), spatial, spatial)
    out.downscale_index_formula = (temporal, spatial, spatial)
    out.memory_used_encode = lambda shape, dtype: 6000 * width * shape[3] * shape[4] * _dtype_size(dtype)
    out.memory_used_decode = lambda shape, dtype: 7000 * width * shape[3] * shape[4] * 64 * _dtype_size(dtype)
    for key in [k for k, (m, v) in _VAES.items() if m() is None or v() is None]:
        del _VAES[key]
    _VAES[id(vae)] = (weakref.ref(vae), weakref.ref(out))
    return out


def _dtype_size(dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()
