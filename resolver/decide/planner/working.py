"""Memory while sampling, beyond the weights: the denoiser's activations and the VAE decode.

An estimate, per model family, with its constants in the data file (``working_memory``) and their
source named there. Families are matched by the pipeline class name's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...known import measured

VAE_TILE = 512  # diffusers' default decoder tile (sample) size with enable_tiling()


@dataclass(frozen=True)
class WorkingMemory:
    family: str
    denoiser: int  # bytes of activations at the peak of one denoiser step (batch and CFG included)
    vae_decode: int
    vae_decode_tiled: int
    source: str

    def describe(self) -> dict:
        return {
            "family": self.family,
            "denoiser_bytes": self.denoiser,
            "vae_decode_bytes": self.vae_decode,
            "vae_decode_tiled_bytes": self.vae_decode_tiled,
            "source": self.source,
            "estimate": True,
        }


def family_of(pipeline_class: str) -> str:
    table = measured.data().get("working_memory", {})
    best = "default"
    for name, row in table.items():
        prefix = row.get("match")
        if prefix and pipeline_class.startswith(prefix) and len(prefix) > len(table.get(best, {}).get("match", "")):
            best = name
    return best


def _inner_dim(config: dict) -> int | None:
    """The denoiser's attention width from its config (heads x head dim), where it says so."""
    heads, dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    if isinstance(heads, int) and isinstance(dim, int):
        return heads * dim
    return None


def _vae_channels(config: dict) -> int | None:
    """Channels of the decoder's full-resolution blocks (the second-widest of the reversed list)."""
    channels = config.get("block_out_channels")
    if isinstance(channels, list) and channels and all(isinstance(c, int) for c in channels):
        return channels[1] if len(channels) > 1 else channels[0]
    return None


def working_memory(
    pipeline_class: str,
    width: int,
    height: int,
    batch_size: int,
    denoiser_config: dict | None = None,
    vae_config: dict | None = None,
    num_frames: int = 1,
    temporal: int | None = None,
) -> WorkingMemory:
    """The configs, where given, supply the widths (so a small model of a family is sized as itself);
    the data file supplies the family's factors and the widths no config states. A video's tokens
    grow with its latent frames (`temporal`: the VAE's frames per latent frame, from its config,
    else the family's), its decode with its frames."""
    family = family_of(pipeline_class)
    c = measured.working_memory(family) or measured.working_memory("default")
    scale, patch = c["latent_scale"], c["patch"]
    hidden = _inner_dim(denoiser_config or {}) or c["hidden"]
    vae_channels = _vae_channels(vae_config or {}) or c["vae_channels"]
    temporal = temporal or c.get("temporal")
    frames = max(1, num_frames) if temporal else 1
    latent = (frames - 1) // temporal + 1 if temporal else 1
    tokens = latent * (height // scale // patch) * (width // scale // patch) + c["text_tokens"]
    denoiser = c["cfg_batch"] * batch_size * tokens * hidden * c["act_factor"] * c["act_bytes"]
    pixels = width * height
    vae = batch_size * frames * pixels * vae_channels * c["vae_factor"] * c["vae_bytes"]
    tiled = int(vae * min(1.0, VAE_TILE * VAE_TILE / pixels)) if pixels else 0
    return WorkingMemory(family, int(denoiser), int(vae), tiled, c["source"])
