"""Run by tests/test_comfyui_bridge_video.py in ComfyUI's python (as bridge_exactness.py, whose helpers
it uses): Wan 2.1, Wan 2.2 A14B, HunyuanVideo and LTX-Video through the bridge. One denoiser call through the bridged MODEL
(ComfyUI's apply_model with the conds its WAN21 model builds from the CONDITIONING) against the
diffusers module; the CONDITIONING against the pipeline's encode_prompt; the video VAE's decode and
encode against diffusers'. Prints one JSON object.

usage: python bridge_exactness_video.py <models folder>
"""

from __future__ import annotations

import json
import sys

import torch
from bridge_exactness import _comfy, bridged, err

PROMPT = "a lighthouse at dusk"


def loaded_family(family: str, root: str, components: list[str]):
    from pipequant.resolver.keep.load import load
    from pipequant.resolver.links.spec import BackendSpec
    from pipequant.testing.families import ensure_family

    spec = BackendSpec.make("torchao", "int8_weight_only", components=components)
    return load(ensure_family(family, root), spec, dtype="bfloat16", device="cpu", cache=None)


def denoiser_error(model, module, cond, seed: int, sigma: float) -> dict:
    """apply_model (sigma in, denoised out; ComfyUI builds the conds) against x - sigma * v, with v
    the diffusers module's flow prediction at timestep sigma * 1000 on the same states."""
    from pipequant.resolver.run.context import diffusers_context

    states, extras = cond[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 8, 6, generator=g)  # 5 frames at 64 x 48 pixels
    s = torch.tensor([sigma])
    with torch.inference_mode():
        kwargs = model.model.extra_conds(cross_attn=states, device=torch.device("cpu"), noise=x, **extras)
        denoised = model.model.apply_model(x, s, **{k: v.cond for k, v in kwargs.items()})
    dt = module.dtype
    with diffusers_context():
        v = module(hidden_states=x.to(dt), timestep=s * 1000, encoder_hidden_states=states.to(dt), return_dict=False)[0]
    expected = x - s * v.float()
    return {"denoiser_max_abs_error": err(denoised, expected), "output_scale": float(expected.abs().max())}


def conditioning_error(pipe, cond) -> float:
    from pipequant.resolver.run.context import diffusers_context

    with diffusers_context():
        states, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512, device="cpu")
    return err(cond[0][0], states) if cond[0][0].shape == states.shape else float("inf")


def vae_errors(vae, pipe) -> dict:
    """ComfyUI's decode ((B, T, H, W, 3) in 0..1) and encode (the latent mean) against diffusers'."""
    from pipequant.resolver.run.context import diffusers_context

    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        image = vae.decode(z)
        latent = vae.encode(image[0])  # VAEEncode's input: the frames as a batch of images
    dt = pipe.vae.dtype
    with diffusers_context():
        ref = ((pipe.vae.decode(z.to(dt)).sample.float() + 1) / 2).clamp(0, 1).movedim(1, -1)
        frames = (image[0].movedim(-1, 0).unsqueeze(0) * 2 - 1).to(dt)
        ref_latent = pipe.vae.encode(frames).latent_dist.mode().float()
    return {
        "frames": image.shape[1],
        "decode_max_abs_error": err(image, ref),
        "encode_max_abs_error": err(latent, ref_latent),
        "latent_shape": list(latent.shape),
    }


def check_wan21(root):
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt

    result = loaded_family("Wan 2.1", root, ["transformer", "text_encoder"])
    pipe = result.pipeline
    model, vae = bridged(result)
    (cond,) = PipeQuantEncodePrompt().encode(result, PROMPT)
    return {
        **denoiser_error(model, pipe.transformer, cond, seed=10, sigma=0.8),
        "conditioning_max_abs_error": conditioning_error(pipe, cond),
        "conditioning_shape": list(cond[0][0].shape),
        "pooled_output": cond[0][1].get("pooled_output", "absent"),
        "model_type": model.model.model_type.name,
        "latent_format": type(model.model.latent_format).__name__,
        "shift": model.model.model_sampling.shift,
        "vae": vae_errors(vae, pipe),
    }


def check_wan22(root):
    """Each expert as its own MODEL: 'first' is transformer (high noise), 'second' transformer_2."""
    from pipequant.nodes.bridge.wan import boundary_step
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt
    from pipequant.nodes.to_comfy import PipeQuantToComfy

    result = loaded_family("Wan 2.2 A14B", root, ["transformer", "transformer_2", "text_encoder"])
    pipe = result.pipeline
    high, vae_high = PipeQuantToComfy().convert(result, "first")
    low, vae_low = PipeQuantToComfy().convert(result, "second")
    (cond,) = PipeQuantEncodePrompt().encode(result, PROMPT)
    out = {
        "high": denoiser_error(high, pipe.transformer, cond, seed=11, sigma=0.95),
        "low": denoiser_error(low, pipe.transformer_2, cond, seed=11, sigma=0.3),
        "wraps": [
            high.model.diffusion_model.denoiser is pipe.transformer,
            low.model.diffusion_model.denoiser is pipe.transformer_2,
        ],
        "experts_differ": not torch.equal(
            high.model.diffusion_model.denoiser.patch_embedding.weight,
            low.model.diffusion_model.denoiser.patch_embedding.weight,
        ),
        "one_vae": vae_high is vae_low,
        "boundary_step_20": boundary_step(high.model.model_sampling, pipe.config.boundary_ratio, 20),
        "conditioning_max_abs_error": conditioning_error(pipe, cond),
    }
    # diffusers' own schedule at 20 steps: how many timesteps are >= boundary_ratio * 1000
    pipe.scheduler.set_timesteps(20)
    out["diffusers_high_steps_20"] = int((pipe.scheduler.timesteps >= pipe.config.boundary_ratio * 1000).sum())
    return out


def check_hunyuan_video(root):
    """HunyuanVideo: the bridged call (ComfyUI's conds: LLaMA states, CLIP pooled as y, guidance 6)
    against the diffusers module (guidance * 1000, as HunyuanVideoPipeline passes it); a prompt's
    unpadded states without a mask against the padded states with the pipeline's mask."""
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt
    from pipequant.resolver.run.context import diffusers_context

    result = loaded_family("HunyuanVideo", root, ["transformer", "text_encoder"])
    pipe = result.pipeline
    model, vae = bridged(result)
    (cond,) = PipeQuantEncodePrompt().encode(result, PROMPT)
    states, extras = cond[0]
    g = torch.Generator().manual_seed(12)
    x = torch.randn(1, 16, 2, 8, 6, generator=g)
    s = torch.tensor([0.7])
    keep = 20  # a prompt of 20 tokens: unpadded (the bridge, no mask) vs padded + mask (diffusers)
    with torch.inference_mode():
        kwargs = model.model.extra_conds(cross_attn=states[:, :keep], device=torch.device("cpu"), noise=x, **extras)
        denoised = model.model.apply_model(x, s, **{k: v.cond for k, v in kwargs.items()})
    dt = pipe.transformer.dtype
    with diffusers_context():
        ref_states, ref_pooled, ref_mask = pipe.encode_prompt(PROMPT, device="cpu")
        mask = torch.zeros_like(ref_mask)
        mask[:, :keep] = 1
        v = pipe.transformer(
            hidden_states=x.to(dt),
            timestep=s * 1000,
            encoder_hidden_states=ref_states,
            encoder_attention_mask=mask,
            pooled_projections=ref_pooled,
            guidance=torch.tensor([6.0 * 1000]),
            return_dict=False,
        )[0]
    expected = x - s * v.float()
    kept = int(ref_mask[0].sum())
    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": max(err(states, ref_states[:, :kept]), err(extras["pooled_output"], ref_pooled)),
        "conditioning_tokens": [states.shape[1], kept],
        "model_type": model.model.model_type.name,
        "latent_format": type(model.model.latent_format).__name__,
        "shift": model.model.model_sampling.shift,
        "vae": vae_errors(vae, pipe),
    }


def check_ltx(root):
    """LTX-Video: the bridged call (sigma in, ComfyUI's conds: T5 states + attention mask, frame rate
    25) against the diffusers module called as LTXPipeline calls it (packed tokens, timestep
    sigma * 1000, rope scaled by the VAE's ratios and the frame rate); the VAE on normalized latents."""
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt
    from pipequant.resolver.run.context import diffusers_context

    result = loaded_family("LTX-Video", root, ["transformer", "text_encoder"])
    pipe = result.pipeline
    model, vae = bridged(result)
    (cond,) = PipeQuantEncodePrompt().encode(result, PROMPT)
    states, extras = cond[0]
    g = torch.Generator().manual_seed(13)
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    s = torch.tensor([0.7])
    with torch.inference_mode():
        kwargs = model.model.extra_conds(cross_attn=states, device=torch.device("cpu"), noise=x, **extras)
        denoised = model.model.apply_model(x, s, **{k: v.cond for k, v in kwargs.items()})
    dt = pipe.transformer.dtype
    t_ratio, s_ratio = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
    with diffusers_context():
        ref_states, ref_mask, *_ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device="cpu")
        v = pipe.transformer(
            hidden_states=pipe._pack_latents(x.to(dt)),
            encoder_hidden_states=ref_states,
            timestep=s * 1000,
            encoder_attention_mask=ref_mask,
            num_frames=2,
            height=4,
            width=6,
            rope_interpolation_scale=(t_ratio / 25, s_ratio, s_ratio),
            return_dict=False,
        )[0]
        v = pipe._unpack_latents(v, 2, 4, 6)
        z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(14))
        ref_image = pipe.vae.decode(pipe._denormalize_latents(z.to(dt), pipe.vae.latents_mean, pipe.vae.latents_std))
        ref_image = ((ref_image.sample.float() + 1) / 2).clamp(0, 1).movedim(1, -1)
    with torch.inference_mode():
        image = vae.decode(z)
        latent = vae.encode(image[0])
    with diffusers_context():
        frames = (image[0].movedim(-1, 0).unsqueeze(0) * 2 - 1).to(dt)
        ref_latent = pipe._normalize_latents(
            pipe.vae.encode(frames).latent_dist.mode(), pipe.vae.latents_mean, pipe.vae.latents_std
        ).float()
    expected = x - s * v.float()
    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": err(states, ref_states),
        "mask_equal": bool(torch.equal(extras["attention_mask"].bool(), ref_mask.cpu())),
        "model_type": model.model.model_type.name,
        "latent_format": type(model.model.latent_format).__name__,
        "vae": {
            "frames": image.shape[1],
            "decode_max_abs_error": err(image, ref_image),
            "encode_max_abs_error": err(latent, ref_latent),
        },
    }


def check_wan22_memory(root):
    """ComfyUI's model management on the two experts: one owner per module (the pack's entries for
    transformer, transformer_2 and the VAE handed over), each MODEL's size is its real bytes,
    loading both loads them whole, unloading everything leaves nothing loaded."""
    import comfy.model_management as mm

    from pipequant.nodes import comfy_memory
    from pipequant.nodes.to_comfy import PipeQuantToComfy
    from pipequant.resolver.keep.memory import tensor_bytes

    result = loaded_family("Wan 2.2 A14B", root, ["transformer", "transformer_2", "text_encoder"])
    comfy_memory.track(mm, result)  # what the Load node does
    pipe = result.pipeline

    def owners(module):
        def holds(patcher):
            inner = getattr(patcher, "model", None)
            adapter = getattr(inner, "diffusion_model", None)
            return (
                inner is module or getattr(adapter, "denoiser", None) is module or getattr(inner, "vae", None) is module
            )

        return sum(1 for m in mm.current_loaded_models if holds(m.model))

    before = [owners(pipe.transformer), owners(pipe.transformer_2)]
    high, vae = PipeQuantToComfy().convert(result, "first")
    low, _ = PipeQuantToComfy().convert(result, "second")
    with torch.inference_mode():
        mm.load_models_gpu([high, low, vae.patcher])
    out = {
        "pack_entries_before": before,
        "owners_after_load": [owners(pipe.transformer), owners(pipe.transformer_2), owners(pipe.vae)],
        "sizes_are_real_bytes": [
            high.size == tensor_bytes(pipe.transformer),
            low.size == tensor_bytes(pipe.transformer_2),
        ],
        "loaded_sizes_equal_sizes": [high.loaded_size() == high.size, low.loaded_size() == low.size],
    }
    with torch.inference_mode():
        mm.unload_all_models()
    out["owners_after_unload_all"] = [owners(pipe.transformer), owners(pipe.transformer_2), owners(pipe.vae)]
    return out


def main() -> None:
    root = sys.argv[1]
    _comfy()  # ComfyUI parses sys.argv: read ours first
    out = {
        "wan21": check_wan21(root),
        "wan22": check_wan22(root),
        "wan22_memory": check_wan22_memory(root),
        "hunyuan_video": check_hunyuan_video(root),
        "ltx": check_ltx(root),
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
