"""Sampler image-to-image and inpainting on the loaded pipeline (diffusers' variants via from_pipe)."""

from __future__ import annotations

import pytest
import torch

from pipequant.nodes import NODE_CLASS_MAPPINGS
from pipequant.resolver.keep.load import load
from pipequant.resolver.problems import ValidationError
from pipequant.resolver.run import img2img
from pipequant.resolver.run.context import diffusers_context
from pipequant.resolver.run.sample import generate

Sampler = NODE_CLASS_MAPPINGS["PipeQuantSampler"]
KW = dict(prompt="a cat", steps=4, width=32, height=32, max_sequence_length=32, seed=1)


def picture(h=32, w=32):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([yy, xx, 0.5 + 0.4 * torch.sin(6 * xx)], -1)[None]


@pytest.fixture(scope="module", params=["flux", "sd"])
def pipe(request, tiny_flux, tiny_sd):
    return load(
        tiny_flux if request.param == "flux" else tiny_sd, None, dtype="float32", device="cpu", cache=None
    ).pipeline


def vae_round_trip(pipeline, image):
    """Independently of the Sampler: diffusers' own image processor around the pipeline's VAE."""
    processor = pipeline.image_processor
    with diffusers_context():
        x = processor.preprocess(image.movedim(-1, 1))
        decoded = pipeline.vae.decode(pipeline.vae.encode(x).latent_dist.mode()).sample
        return torch.from_numpy(processor.postprocess(decoded, output_type="np")).float()


def sample(pipeline, **kw):
    with torch.inference_mode():
        return generate(pipeline, **{**KW, **kw})


def test_denoise_zero_returns_the_input_through_the_vae(pipe):
    image = picture()
    out = sample(pipe, image=image, denoise=0.0)
    expected = vae_round_trip(pipe, image)
    assert out.shape == image.shape
    assert (out - expected).abs().max() < 2e-3  # the input, within the VAE's round-trip error
    redrawn = sample(pipe, image=image, denoise=0.75)
    assert (redrawn - expected).abs().mean() > 10 * (out - expected).abs().mean()


def test_img2img_uses_the_image_and_reloads_nothing(pipe, monkeypatch):
    transformer_or_unet = getattr(pipe, "transformer", None) or pipe.unet
    a = sample(pipe, image=picture(), denoise=0.5)
    b = sample(pipe, image=1 - picture(), denoise=0.5)
    assert (a - b).abs().mean() > 1e-3
    variant = img2img.variant(pipe, img2img.IMAGE2IMAGE)
    assert "Img2Img" in type(variant).__name__
    assert (getattr(variant, "transformer", None) or variant.unet) is transformer_or_unet  # same modules
    assert torch.equal(sample(pipe, image=picture(), denoise=0.5), a)  # deterministic; cached variant
    assert sample(pipe, image=picture(), denoise=1.0).shape == (1, 32, 32, 3)


def test_inpainting_keeps_the_unmasked_area(pipe, monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    # The random tiny VAE's latent distribution is wide; the inpaint pipeline samples from it. Take
    # its mode, as a trained VAE's narrow distribution nearly does.
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    image = picture()
    round_trip = vae_round_trip(pipe, image)
    nothing = torch.zeros(1, 32, 32)
    kept = sample(pipe, image=image, mask=nothing, denoise=1.0)
    # Nothing masked: every pixel is the input through the VAE.
    assert (kept - round_trip).abs().mean() < 0.01
    # Half masked: the decoder mixes the whole latent (its attention spans the image), so the check is
    # on what reaches it: the unmasked half of the final latents is the input's own latents.
    seen = []
    decode = type(pipe.vae).decode
    monkeypatch.setattr(
        type(pipe.vae), "decode", lambda self, z, *a, **k: seen.append(z.clone()) or decode(self, z, *a, **k)
    )
    left = torch.zeros(1, 32, 32)
    left[:, :, :16] = 1
    out = sample(pipe, image=image, mask=left, denoise=1.0)
    with diffusers_context():
        own = pipe.vae.encode(pipe.image_processor.preprocess(image.movedim(-1, 1))).latent_dist.mode()
    final = seen[-1]
    assert final.shape == own.shape
    keep, redraw = (final - own)[..., 18:].abs().mean(), (final - own)[..., :14].abs().mean()
    assert keep < 0.02 * redraw, (float(keep), float(redraw))
    assert (out - round_trip)[:, :, :14].abs().mean() > 0.05  # the masked half was redrawn
    assert "Inpaint" in type(img2img.variant(pipe, img2img.INPAINT)).__name__


def test_other_sizes_are_resized_and_bad_inputs_named(tiny_flux):
    pipe = load(tiny_flux, None, dtype="float32", device="cpu", cache=None).pipeline
    assert sample(pipe, image=picture(48, 40), denoise=0.5).shape == (1, 32, 32, 3)
    assert sample(pipe, image=picture(48, 40), mask=torch.ones(20, 24), denoise=0.5).shape == (1, 32, 32, 3)
    assert sample(pipe, image=picture(), denoise=0.5, batch_size=2).shape == (2, 32, 32, 3)
    cases = [
        (dict(mask=torch.ones(1, 32, 32)), "mask_without_image"),
        (dict(image=picture(), denoise=1.5), "denoise_invalid"),
        (dict(image=torch.rand(2, 32, 32, 3), batch_size=3), "image_batch_mismatch"),
        (dict(image=torch.rand(32, 32, 3)), "image_invalid"),
        (dict(image=picture(), mask=torch.ones(2, 32, 32)), "mask_batch_mismatch"),
    ]
    for kw, code in cases:
        with pytest.raises(ValidationError) as info:
            sample(pipe, **kw)
        assert info.value.codes == [code]


def test_a_family_without_the_variant_gets_a_clear_error():
    from diffusers import DiffusionPipeline

    class NoVariantPipeline(DiffusionPipeline):
        pass

    pipeline = NoVariantPipeline()
    pipeline.register_to_config()
    with pytest.raises(ValidationError) as info:
        img2img.variant(pipeline, img2img.INPAINT)
    assert info.value.codes == ["no_inpaint_variant"] and "NoVariantPipeline has no inpainting" in str(info.value)


def test_sampler_node_takes_image_mask_and_denoise(monkeypatch, models_root, tiny_flux):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    load_node = NODE_CLASS_MAPPINGS["PipeQuantLoadPipeline"]
    optional = Sampler.INPUT_TYPES()["optional"]
    assert list(optional)[-5:-2] == ["image", "mask", "denoise"] and optional["denoise"][1]["default"] == 1.0
    args = dict(
        prompt="a cat",
        negative_prompt="",
        steps=4,
        guidance_scale=3.5,
        width=32,
        height=32,
        seed=1,
        batch_size=1,
        max_sequence_length=32,
    )
    with torch.inference_mode():
        (pipeline, _) = load_node().load("tiny-flux", "float32", "cpu", "none")
        (out,) = Sampler().sample(pipeline, **args, image=picture(), denoise=0.0)
        assert (out - vae_round_trip(pipeline.pipeline, picture())).abs().max() < 2e-3
        with pytest.raises(ValidationError) as info:
            Sampler().sample(pipeline, **args, mask=torch.ones(1, 32, 32))
    assert str(info.value).startswith("Quantized Pipeline Sampler › mask:")
