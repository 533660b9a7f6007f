"""The tiny offline pipelines everything else builds on (pipequant.testing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipequant import testing as tiny

KINDS = {
    "flux": ("tiny_flux", "FluxPipeline"),
    "sd3": ("tiny_sd3", "StableDiffusion3Pipeline"),
    "sd": ("tiny_sd", "StableDiffusionPipeline"),
}


def _run(pipe, **extra):
    kwargs = dict(
        prompt="a cat",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    if "tokenizer_2" in pipe.components:  # FLUX, SD3: or T5 pads to 256/512 tokens
        kwargs["max_sequence_length"] = 32
    kwargs.update(extra)
    return pipe(**kwargs).images


@pytest.fixture(scope="module")
def pipelines(request):
    """Each tiny pipeline loaded once (bf16, CPU)."""
    from diffusers import DiffusionPipeline

    loaded = {}
    for kind, (fixture, _) in KINDS.items():
        path = request.getfixturevalue(fixture)
        loaded[kind] = DiffusionPipeline.from_pretrained(str(path), dtype=torch.bfloat16)
    return loaded


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pipeline_loads_and_makes_a_finite_image(kind, pipelines, request):
    path = request.getfixturevalue(KINDS[kind][0])
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == KINDS[kind][1]
    pipe = pipelines[kind]
    assert type(pipe).__name__ == KINDS[kind][1]

    image = _run(pipe)
    assert image.shape == (1, 32, 32, 3)
    assert np.isfinite(image).all()
    assert image.std() > 0  # not a constant image


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_linear_input_is_a_multiple_of_16(kind, pipelines):
    checked = 0
    for name, component in pipelines[kind].components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        for module_name, module in component.named_modules():
            if isinstance(module, torch.nn.Linear):
                assert module.in_features % 16 == 0, f"{name}.{module_name}: in_features={module.in_features}"
                checked += 1
    assert checked > 0


def test_tokenizers_reload_from_the_folder(tiny_flux):
    from transformers import CLIPTokenizer, T5Tokenizer

    clip = CLIPTokenizer.from_pretrained(str(tiny_flux / "tokenizer"))
    t5 = T5Tokenizer.from_pretrained(str(tiny_flux / "tokenizer_2"))
    assert clip.model_max_length == 77
    assert clip.convert_ids_to_tokens(clip("a cat").input_ids) == [
        "<|startoftext|>",
        "a</w>",
        "c",
        "a",
        "t</w>",
        "<|endoftext|>",
    ]
    assert t5.convert_ids_to_tokens(t5("a cat").input_ids) == ["▁a", "▁c", "a", "t", "</s>"]


def test_ensure_pipeline_is_idempotent(models_root, tiny_sd):
    before = {p: p.stat().st_mtime_ns for p in tiny_sd.rglob("*")}
    again = tiny.ensure_pipeline("sd", models_root)
    assert again == tiny_sd
    after = {p: p.stat().st_mtime_ns for p in tiny_sd.rglob("*")}
    assert after == before
    assert (tiny_sd / tiny.MARKER).exists()
    assert not [p for p in models_root.iterdir() if ".tmp-" in p.name]


def test_ensure_pipeline_rebuilds_a_half_written_folder(tmp_path):
    path = tiny.ensure_pipeline("sd", tmp_path)
    (path / tiny.MARKER).unlink()  # as if the build had died before finishing
    (path / "unet" / "config.json").write_text("{broken")
    rebuilt = tiny.ensure_pipeline("sd", tmp_path)
    assert rebuilt == path
    assert (path / tiny.MARKER).exists()
    assert json.loads((path / "unet" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"


def test_ensure_pipeline_rejects_unknown_kinds(tmp_path):
    with pytest.raises(ValueError, match="unknown pipeline kind"):
        tiny.ensure_pipeline("sdxl", tmp_path)


@pytest.mark.parametrize(
    "size,low,high", [("tiny", 0.5e6, 2e6), ("20m", 15e6, 25e6), ("200m", 150e6, 250e6), ("2b", 1.5e9, 2.5e9)]
)
def test_flux_sizes(size, low, high):
    from diffusers import FluxTransformer2DModel

    kw = tiny.flux_size_kwargs(size)
    heads, dim = kw["num_attention_heads"], kw["attention_head_dim"]
    with torch.device("meta"):
        model = FluxTransformer2DModel(
            num_layers=kw["num_layers"],
            num_single_layers=kw["num_single_layers"],
            num_attention_heads=heads,
            attention_head_dim=dim,
            joint_attention_dim=kw["joint_attention_dim"],
            pooled_projection_dim=128,
            guidance_embeds=True,
            axes_dims_rope=(16, (dim - 16) // 2, (dim - 16) // 2),
        )
    n = sum(p.numel() for p in model.parameters())
    assert low < n < high
    assert all(m.in_features % 16 == 0 for m in model.modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError):
        tiny.flux_size_kwargs("7b")


def test_flux_gguf_loads_as_gguf_and_runs(flux_gguf, tiny_flux):
    import gguf
    from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    reader = gguf.GGUFReader(str(flux_gguf))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["transformer_blocks.0.attn.to_q.weight"] == "Q8_0"
    assert types["transformer_blocks.0.attn.to_q.bias"] == "F32"  # 1-D stays unquantized
    assert types["transformer_blocks.0.attn.norm_q.weight"] == "F32"
    assert types["x_embedder.weight"] == "F32"  # FLUX's input/output layers, as in real files
    assert types["context_embedder.weight"] == "F16"

    model = FluxTransformer2DModel.from_single_file(
        str(flux_gguf),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16),
        config=str(tiny_flux),
        subfolder="transformer",
        dtype=torch.bfloat16,
    )
    quantized = [n for n, p in model.named_parameters() if isinstance(p, GGUFParameter)]
    assert len(quantized) == sum(1 for v in types.values() if v == "Q8_0")
    assert isinstance(model.single_transformer_blocks[0].proj_mlp, GGUFLinear)
    assert not any(isinstance(p, GGUFParameter) for p in model.parameters() if p.ndim == 1)

    pipe = FluxPipeline.from_pretrained(str(tiny_flux), transformer=model, dtype=torch.bfloat16)
    image = _run(pipe)
    assert image.shape == (1, 32, 32, 3)
    assert np.isfinite(image).all()


def test_gguf_bf16_is_exact_and_k_quants_are_refused(tiny_flux, tmp_path):
    import gguf

    out = tiny.write_gguf(tiny_flux, "transformer", tmp_path / "t.gguf", "BF16")
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types == {"BF16", "F32"}
    with pytest.raises(ValueError, match="K-quants"):
        tiny.write_gguf(tiny_flux, "transformer", tmp_path / "k.gguf", "Q4_K")


def test_bnb_cpu_fixture_loads_4bit_and_8bit(bnb_cpu, tiny_flux):
    import bitsandbytes as bnb
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    for config, layer in (
        (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16),
            bnb.nn.Linear4bit,
        ),
        (BitsAndBytesConfig(load_in_8bit=True), bnb.nn.Linear8bitLt),
    ):
        model = FluxTransformer2DModel.from_pretrained(
            str(tiny_flux), subfolder="transformer", quantization_config=config, dtype=torch.bfloat16
        )
        assert any(isinstance(m, layer) for m in model.modules())
        assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_bnb_on_cpu_is_undone_on_exit(tiny_flux):
    """Outside the block diffusers refuses bnb without a GPU again (later tests see the truth)."""
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    original = BnB4BitDiffusersQuantizer.__dict__["validate_environment"]
    with tiny.bnb_on_cpu():
        assert BnB4BitDiffusersQuantizer.__dict__["validate_environment"] is not original
    assert BnB4BitDiffusersQuantizer.__dict__["validate_environment"] is original
    if torch.cuda.is_available():
        return
    with pytest.raises(RuntimeError, match="GPU"):
        FluxTransformer2DModel.from_pretrained(
            str(tiny_flux),
            subfolder="transformer",
            dtype=torch.bfloat16,
            quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        )
