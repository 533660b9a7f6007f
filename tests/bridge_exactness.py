"""Run by tests/test_comfyui_bridge.py in ComfyUI's python: one denoiser call through the bridged
MODEL (ComfyUI's own apply_model: input scaling, dtype casts, timestep, the family's conds) against
the diffusers module called the way its pipeline calls it, and the CONDITIONING against the
pipeline's encode_prompt. Prints one JSON object: family -> measured errors.

usage: python bridge_exactness.py <models folder> [families...]
"""

from __future__ import annotations

import json
import sys

import torch

FAMILIES = ("flux", "chroma", "sd3", "sd", "sdxl", "memory", "vae")
IMAGE_FAMILIES = ("qwen_image", "lumina2", "z_image", "hidream")  # tests/test_comfyui_bridge_images.py


def _comfy():
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management as mm

    return mm


def loaded(kind, root):
    from pipequant import testing as tiny
    from pipequant.resolver.keep.load import load
    from pipequant.resolver.links.spec import BackendSpec

    path = tiny.ensure_pipeline(kind, root)
    spec = BackendSpec.make("torchao", "int8_weight_only", components=["unet" if kind == "sd" else "transformer"])
    return load(path, spec, dtype="bfloat16", device="cpu", cache=None)


def bridged(result):
    from pipequant.nodes.to_comfy import PipeQuantToComfy

    return PipeQuantToComfy().convert(result)


def err(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def conditioning_error(result, pipe_call) -> float:
    """The node's CONDITIONING against the pipeline's own encode_prompt, same prompt."""
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt
    from pipequant.resolver.run.context import diffusers_context

    (cond,) = PipeQuantEncodePrompt().encode(result, "a lighthouse at dusk")
    with diffusers_context():
        states, pooled = pipe_call("a lighthouse at dusk")
    out = err(cond[0][0], states)
    if pooled is not None:
        out = max(out, err(cond[0][1]["pooled_output"], pooled))
    return out


def check_flux(root):
    result = loaded("flux", root)
    pipe = result.pipeline
    model, vae = bridged(result)
    base = model.model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 12, generator=g)
    ctx = torch.randn(1, 7, 128, generator=g)
    pooled = torch.randn(1, 128, generator=g)
    sigma = torch.tensor([0.7])
    with torch.inference_mode():
        denoised = base.apply_model(x, sigma, c_crossattn=ctx, y=pooled, guidance=torch.tensor([3.5]))
    from pipequant.resolver.run.context import diffusers_context

    tr = pipe.transformer
    dt = tr.dtype
    with diffusers_context():
        packed = pipe._pack_latents(x.to(dt), 1, 16, 8, 12)
        ids = pipe._prepare_latent_image_ids(1, 4, 6, "cpu", dt)
        v = tr(
            hidden_states=packed,
            encoder_hidden_states=ctx.to(dt),
            pooled_projections=pooled.to(dt),
            timestep=sigma,
            img_ids=ids,
            txt_ids=torch.zeros(7, 3, dtype=dt),
            guidance=torch.tensor([3.5]),
            return_dict=False,
        )[0]
        v = pipe._unpack_latents(v, 64, 96, 8)  # (height, width) in pixels, vae_scale_factor 8
    expected = x - sigma * v.float()

    def call(text):
        states, pooled_out, _ = pipe.encode_prompt(text, prompt_2=None, device="cpu")
        return states, pooled_out

    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": conditioning_error(result, call),
        "model_size_bytes": model.size,
        "vae_kind": type(vae.first_stage_model).__name__,
    }


def tiny_chroma():
    """A Chroma-shaped pipeline in memory: T5 + ChromaTransformer2DModel + the tiny 16-channel VAE."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5EncoderModel

    from pipequant.testing.pipelines import _t5_config, _vae
    from pipequant.testing.tokenizers import t5_tokenizer

    torch.manual_seed(5)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=64,
        num_attention_heads=2,
        joint_attention_dim=128,
        axes_dims_rope=(16, 24, 24),
        approximator_num_channels=16,
        approximator_hidden_dim=64,
        approximator_layers=1,
    )
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(16, 0.3611, 0.1159),
        text_encoder=T5EncoderModel(_t5_config(128, 2)),
        tokenizer=t5_tokenizer(),
        transformer=transformer,
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # built, not loaded: from_pretrained would have turned dropout off
    return pipe.to(torch.bfloat16)


def check_chroma(root):
    """The bridged call (the prompt's tokens unpadded, ComfyUI's guidance 0) against the diffusers
    module on the pipeline's padded T5 states with its attention mask."""
    from pathlib import Path
    from types import SimpleNamespace

    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt
    from pipequant.resolver.run.context import diffusers_context

    pipe = tiny_chroma()
    result = SimpleNamespace(
        pipeline=pipe, loras=(), plan=SimpleNamespace(model=SimpleNamespace(folder=Path("tiny-chroma")))
    )
    model, _ = bridged(result)
    (cond,) = PipeQuantEncodePrompt().encode(result, "a lighthouse at dusk", max_sequence_length=32)
    states, extras = cond[0]
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 8, 8, generator=g)
    sigma = torch.tensor([0.7])
    with torch.inference_mode():
        kwargs = model.model.extra_conds(cross_attn=states, device=torch.device("cpu"), noise=x, **extras)
        conds = {k: v.cond for k, v in kwargs.items()}
        denoised = model.model.apply_model(x, sigma, **conds)
    dt = pipe.transformer.dtype
    with diffusers_context():
        padded, _ids, mask, *_ = pipe.encode_prompt(
            "a lighthouse at dusk", device="cpu", do_classifier_free_guidance=False, max_sequence_length=32
        )
        packed = pipe._pack_latents(x.to(dt), 1, 16, 8, 8)
        v = pipe.transformer(
            hidden_states=packed,
            timestep=sigma,
            encoder_hidden_states=padded,
            txt_ids=torch.zeros(padded.shape[1], 3, dtype=dt),
            img_ids=pipe._prepare_latent_image_ids(1, 4, 4, "cpu", dt),
            # The mask's meaning as a boolean: ChromaPipeline hands it over in float (1/0), which
            # SDPA adds to the logits instead of masking (pads keep e^-1 of the weight; measured
            # 0.05 of 3.5 apart from the boolean mask, which equals the unpadded tokens to 1e-6).
            attention_mask=pipe._prepare_attention_mask(1, packed.shape[1], dt, mask).bool(),
            return_dict=False,
        )[0]
        v = pipe._unpack_latents(v, 64, 64, 8)
    expected = x - sigma * v.float()
    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": err(states, padded[:, : states.shape[1]]),
        "conditioning_tokens": states.shape[1],
        "model_type": model.model.model_type.name,
    }


def check_sd3(root):
    result = loaded("sd3", root)
    pipe = result.pipeline
    model, _ = bridged(result)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 8, generator=g)
    ctx = torch.randn(1, 9, 128, generator=g)
    pooled = torch.randn(1, 128, generator=g)
    sigma = torch.tensor([0.6])
    with torch.inference_mode():
        denoised = model.model.apply_model(x, sigma, c_crossattn=ctx, y=pooled)
    from pipequant.resolver.run.context import diffusers_context

    tr = pipe.transformer
    dt = tr.dtype
    with diffusers_context():
        v = tr(
            hidden_states=x.to(dt),
            encoder_hidden_states=ctx.to(dt),
            pooled_projections=pooled.to(dt),
            timestep=sigma * 1000,  # StableDiffusion3Pipeline hands the scheduler's timestep (sigma * 1000)
            return_dict=False,
        )[0]
    expected = x - sigma * v.float()

    def call(text):
        states, _, pooled_out, _ = pipe.encode_prompt(text, None, None, device="cpu", do_classifier_free_guidance=False)
        return states, pooled_out

    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": conditioning_error(result, call),
        "model_size_bytes": model.size,
    }


def _eps_reference(base, unet, x, sigma, ctx, added=None):
    """What an EPS ComfyUI model computes from the diffusers UNet's noise prediction."""
    from pipequant.resolver.run.context import diffusers_context

    ms = base.model_sampling
    xin = ms.calculate_input(sigma, x)
    t = ms.timestep(sigma).float()
    dt = unet.dtype
    with diffusers_context():
        eps = unet(xin.to(dt), t, encoder_hidden_states=ctx.to(dt), added_cond_kwargs=added, return_dict=False)[0]
    return ms.calculate_denoised(sigma, eps.float(), x)


def check_sd(root):
    result = loaded("sd", root)
    pipe = result.pipeline
    model, _ = bridged(result)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, 64, generator=g)
    sigma = torch.tensor([2.5])
    with torch.inference_mode():
        denoised = model.model.apply_model(x, sigma, c_crossattn=ctx)
        expected = _eps_reference(model.model, pipe.unet, x, sigma, ctx)

    def call(text):
        states, _ = pipe.encode_prompt(text, "cpu", 1, False)
        return states, None

    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": conditioning_error(result, call),
        "model_size_bytes": model.size,
    }


def tiny_sdxl():
    """An SDXL-shaped pipeline in memory (the pack's testing builders have none): two CLIPs (the
    second with projection), a UNet taking text_time embeddings (256 per size condition, as
    ComfyUI's SDXL adm), the tiny 4-channel VAE."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from pipequant.testing.pipelines import _clip_config, _vae
    from pipequant.testing.tokenizers import clip_tokenizer

    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=64 + 6 * 256,
        use_linear_projection=True,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025, None),
        text_encoder=CLIPTextModel(_clip_config(64, 2)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(64, 2, projection_dim=64)),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # built, not loaded: from_pretrained would have turned dropout off
    return pipe.to(torch.bfloat16)


def check_sdxl(root, pipe=None):
    """Through the node path: ComfyUI's own encode_adm builds `y` from the CONDITIONING's pooled
    vector and size conditions; diffusers gets text_embeds + the pipeline's add_time_ids."""
    from pathlib import Path
    from types import SimpleNamespace

    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt

    pipe = pipe or tiny_sdxl()
    result = SimpleNamespace(
        pipeline=pipe, loras=(), plan=SimpleNamespace(model=SimpleNamespace(folder=Path("tiny-sdxl")))
    )
    model, _vae_out = bridged(result)
    base = model.model
    (cond,) = PipeQuantEncodePrompt().encode(result, "a lighthouse at dusk", width=832, height=1216)
    states, extras = cond[0]
    from pipequant.resolver.run.context import diffusers_context

    with diffusers_context():
        ref_states, _, ref_pooled, _ = pipe.encode_prompt(
            "a lighthouse at dusk", device="cpu", do_classifier_free_guidance=False
        )
    cond_err = max(err(states, ref_states), err(extras["pooled_output"], ref_pooled))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=g)
    sigma = torch.tensor([3.0])
    with torch.inference_mode():
        y = base.encode_adm(**extras)
        denoised = base.apply_model(x, sigma, c_crossattn=states, y=y)
        time_ids = torch.tensor([[1216.0, 832.0, 0.0, 0.0, 1216.0, 832.0]])  # original, crop, target (h, w)
        added = {"text_embeds": extras["pooled_output"].to(pipe.unet.dtype), "time_ids": time_ids}
        expected = _eps_reference(base, pipe.unet, x, sigma, states, added)
    return {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": cond_err,
        "model_type": base.model_type.name,
    }


def check_memory(root):
    """ComfyUI's model management on the bridged FLUX MODEL: one owner per module (the pack's own
    entry for the transformer is handed over), the loaded size is the real bytes, and freeing
    memory offloads it whole without an error."""
    import comfy.model_management as mm

    from pipequant.nodes import comfy_memory
    from pipequant.resolver.keep.memory import tensor_bytes

    result = loaded("flux", root)
    comfy_memory.track(mm, result)  # what the Load node does
    transformer = result.pipeline.transformer

    def owners():
        return sum(
            1
            for m in mm.current_loaded_models
            if getattr(m.model, "model", None) is transformer
            or getattr(getattr(getattr(m.model, "model", None), "diffusion_model", None), "denoiser", None)
            is transformer
        )

    before = owners()
    model, _ = bridged(result)
    with torch.inference_mode():
        mm.load_models_gpu([model])
    out = {
        "pack_entries_before": before,
        "owners_after_load": owners(),
        "size_is_real_bytes": model.size == tensor_bytes(transformer),
        "loaded_size_equals_size": model.loaded_size() == model.size,
    }
    with torch.inference_mode():
        mm.unload_all_models()
    out["owners_after_unload_all"] = owners()
    out["loaded_size_after_unload"] = model.loaded_size()
    return out


def check_vae(root):
    """A VAE of the standard architecture (FLUX-style: 16 channels, no quant convs; SD-style: 4
    channels with them) becomes ComfyUI's own VAE (ComfyUI converts the diffusers keys): its
    decode equals diffusers' decode."""
    from diffusers import AutoencoderKL

    from pipequant.nodes.bridge import build_vae
    from pipequant.resolver.run.context import diffusers_context

    out = {}
    for name, latent, quant in (("flux_style", 16, False), ("sd_style", 4, True)):
        torch.manual_seed(7)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=latent,
            use_quant_conv=quant,
            use_post_quant_conv=quant,
        ).eval()
        comfy_vae = build_vae(vae, name)
        z = torch.randn(1, latent, 8, 8, generator=torch.Generator().manual_seed(8))
        with torch.inference_mode():
            image = comfy_vae.decode(z)  # (B, H, W, 3) in 0..1
        with diffusers_context():
            ref = ((vae.decode(z).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
        out[name] = {"comfy_class": type(comfy_vae.first_stage_model).__name__, "decode_max_abs_error": err(image, ref)}
    return out


def loaded_family(name, root):
    """A tiny pipeline of testing/families.py, its transformer quantized (torchao int8, bf16)."""
    from pipequant.resolver.keep.load import load
    from pipequant.resolver.links.spec import BackendSpec
    from pipequant.testing.families import ensure_family

    spec = BackendSpec.make("torchao", "int8_weight_only", components=["transformer"])
    return load(ensure_family(name, root), spec, dtype="bfloat16", device="cpu", cache=None)


def through_comfy(model, x, sigma, states, extras):
    """ComfyUI's own path from a CONDITIONING to the denoised latent: the model's extra_conds
    (the family's cond keys), then apply_model."""
    with torch.inference_mode():
        kwargs = model.model.extra_conds(cross_attn=states, device=torch.device("cpu"), noise=x, **extras)
        conds = {k: v.cond for k, v in kwargs.items()}
        return model.model.apply_model(x, sigma, **conds)


def encoded(result, text="a lighthouse at dusk", **kwargs):
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt

    (cond,) = PipeQuantEncodePrompt().encode(result, text, **kwargs)
    return cond[0]


# -- the image families of tests/test_comfyui_bridge_images.py ---------------------------------------
# Each reference calls the diffusers transformer the way its pipeline does and returns the
# prediction in ComfyUI's convention (what the adapter must return: denoised = x - sigma * it).
PROMPT = "a lighthouse at dusk"


def qwen_image_reference(pipe, x, sigma):
    """x: ComfyUI's (B, 16, 1, H, W). QwenImagePipeline: packed 2x2 tokens, img_shapes, timestep/1000."""
    from pipequant.resolver.run.context import diffusers_context

    tr = pipe.transformer
    b, c, _, h, w = x.shape
    with diffusers_context():
        states, mask = pipe.encode_prompt(PROMPT, device="cpu", max_sequence_length=32)
        packed = pipe._pack_latents(x[:, :, 0].to(tr.dtype), b, c, h, w)
        v = tr(
            hidden_states=packed,
            timestep=sigma.to(tr.dtype),
            encoder_hidden_states=states,
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        return pipe._unpack_latents(v, h * 8, w * 8, 8).float(), states  # (B, C, 1, h, w)


def lumina2_reference(pipe, x, sigma):
    """Lumina2Pipeline: the padded states with their mask, t = 1 - sigma, the output negated."""
    from pipequant.resolver.run.context import diffusers_context

    tr = pipe.transformer
    with diffusers_context():
        padded, mask, *_ = pipe.encode_prompt(
            PROMPT, do_classifier_free_guidance=False, device="cpu", max_sequence_length=512
        )
        v = tr(
            hidden_states=x.to(tr.dtype),
            timestep=1 - sigma,
            encoder_hidden_states=padded,
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]
    return -v.float(), padded[:, mask[0].bool()]


def z_image_reference(pipe, x, sigma):
    """ZImagePipeline: lists of (C, 1, H, W) latents and unpadded prompts, t = 1 - sigma, negated."""
    from pipequant.resolver.run.context import diffusers_context

    tr = pipe.transformer
    with diffusers_context():
        embeds, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False, max_sequence_length=32)
        outs = tr(list(x.unsqueeze(2).to(tr.dtype).unbind(0)), 1 - sigma, embeds * x.shape[0], return_dict=False)[0]
    return -torch.stack([o.float() for o in outs]).squeeze(2), embeds[0].unsqueeze(0)


def hidream_reference(pipe, x, sigma):
    """HiDreamImagePipeline: the scheduler's timestep (sigma * 1000), four encoders, negated."""
    from pipequant.resolver.run.context import diffusers_context

    tr = pipe.transformer
    with diffusers_context():
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(
            PROMPT, device="cpu", do_classifier_free_guidance=False, max_sequence_length=32
        )
        v = tr(
            hidden_states=x.to(tr.dtype),
            timesteps=sigma * 1000,
            encoder_hidden_states_t5=t5,
            encoder_hidden_states_llama3=llama,
            pooled_embeds=pooled,
            return_dict=False,
        )[0]
    return -v.float(), (t5, pooled, llama.movedim(0, 1))


# family key -> (testing/families.py name, latent shape ComfyUI hands the model, reference, node kwargs)
IMAGE_CASES = {
    "qwen_image": ("Qwen-Image", (1, 16, 1, 8, 12), qwen_image_reference, {"max_sequence_length": 32}),
    "lumina2": ("Lumina 2", (1, 16, 8, 12), lumina2_reference, {"max_sequence_length": 512}),
    "z_image": ("Z-Image Turbo", (1, 16, 8, 12), z_image_reference, {"max_sequence_length": 32}),
    "hidream": ("HiDream-I1", (1, 16, 8, 8), hidream_reference, {"max_sequence_length": 32}),
}


def image_conditioning_error(states, extras, ref) -> float:
    """The node's CONDITIONING against the reference's encode_prompt (HiDream: three parts)."""
    if isinstance(ref, tuple):
        t5, pooled, llama = ref
        return max(err(states, t5), err(extras["pooled_output"], pooled), err(extras["conditioning_llama3"], llama))
    return err(states, ref)


def check_image_family(key, root):
    """One call through the bridged MODEL (ComfyUI's extra_conds from the node's CONDITIONING, then
    apply_model) against the pipeline's own call of its transformer."""
    name, shape, reference, node_kwargs = IMAGE_CASES[key]
    result = loaded_family(name, root)
    model, vae = bridged(result)
    states, extras = encoded(result, **node_kwargs)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(11))
    sigma = torch.tensor([0.6])
    denoised = through_comfy(model, x, sigma, states, extras)
    pred, ref_cond = reference(result.pipeline, x, sigma)
    expected = x - sigma * pred
    out = {
        "denoiser_max_abs_error": err(denoised, expected),
        "output_scale": float(expected.abs().max()),
        "conditioning_max_abs_error": image_conditioning_error(states, extras, ref_cond),
        "conditioning_keys": sorted(extras),
        "model_type": model.model.model_type.name,
        "shift": float(model.model.model_sampling.shift),
        "vae_kind": type(vae.first_stage_model).__name__,
    }
    out.update(vae_round_trip(result.pipeline.vae, vae, x.ndim))
    return out


def vae_round_trip(pipe_vae, vae, ndim) -> dict:
    """ComfyUI's decode against diffusers' on the same latent; an encode's latent shape."""
    from pipequant.resolver.run.context import diffusers_context

    z = torch.randn(1, 16, *((1,) if ndim == 5 else ()), 4, 4, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        image = vae.decode(z)  # (B, H, W, 3) or (B, T, H, W, 3), 0..1
        latent = vae.encode(image.reshape(-1, *image.shape[-3:])[:1])
    with diffusers_context():
        ref = ((pipe_vae.decode(z.to(pipe_vae.dtype)).sample.float() + 1) / 2).clamp(0, 1).movedim(1, -1)
    return {"vae_decode_max_abs_error": err(image, ref), "vae_encode_shape": list(latent.shape)}


def _family_check(key):
    return lambda root: check_image_family(key, root)


def check_sdxl_small_time_embedding(root):
    """testing/families.py's SDXL embeds each size condition in 16 sinusoids, not SDXL's 256."""
    from pipequant.resolver.keep.load import load
    from pipequant.testing.families import ensure_family

    pipe = load(ensure_family("SDXL", root), None, dtype="bfloat16", device="cpu", cache=None).pipeline
    return check_sdxl(root, pipe)


for _key in IMAGE_CASES:
    globals()[f"check_{_key}"] = _family_check(_key)


def main() -> None:
    root, kinds = sys.argv[1], sys.argv[2:] or FAMILIES
    _comfy()  # ComfyUI parses sys.argv: read ours first
    out = {}
    for kind in kinds:
        out[kind] = globals()[f"check_{kind}"](root)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
