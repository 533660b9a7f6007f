"""Quantizing as the weights stream in (resolver/keep/stream.py) gives exactly what diffusers gives.

Each backend that streams loads the tiny FLUX transformer both ways; every tensor behind the state
dict (tensor subclasses opened up) is compared bit for bit, and so is one forward output. The Load
path streams the diffusers models of a plan and falls back, with a note, where it cannot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipequant.resolver.keep import load, stream
from pipequant.resolver.links import spec_from_dict


def _config(backend: str):
    import diffusers

    if backend == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        return diffusers.TorchAoConfig(Int8WeightOnlyConfig())
    if backend == "quanto":
        return diffusers.QuantoConfig(weights_dtype="int8")
    sdnq = pytest.importorskip("sdnq")
    return sdnq.SDNQConfig(weights_dtype="int8")


def _flat(model) -> dict:
    """Every plain tensor behind the state dict, tensor subclasses opened up (torchao, quanto)."""
    out, todo = {}, list(model.state_dict().items())
    while todo:
        name, value = todo.pop()
        if type(value) in (torch.Tensor, torch.nn.Parameter):
            out[name] = value
        elif hasattr(value, "__tensor_flatten__"):
            inner, _ = value.__tensor_flatten__()
            todo += [(f"{name}.{n}", getattr(value, n)) for n in inner]
        else:
            out[name] = value
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() and a.element_size() == 1:  # float8: compare the bits (NaN-safe)
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


def _forward(model):
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    image, text = 16, 8
    kwargs = {
        "hidden_states": torch.randn(1, image, cfg.in_channels, generator=gen),
        "encoder_hidden_states": torch.randn(1, text, cfg.joint_attention_dim, generator=gen),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=gen),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(image, 3),
        "txt_ids": torch.zeros(text, 3),
        "guidance": torch.tensor([3.5]) if cfg.guidance_embeds else None,
    }
    with torch.no_grad():
        return model(
            **{k: v.to(torch.bfloat16) if v is not None and v.is_floating_point() else v for k, v in kwargs.items()}
        ).sample


@pytest.mark.parametrize("backend", ["torchao", "quanto", "sdnq"])
def test_streamed_tensors_are_bit_for_bit_those_of_from_pretrained(tiny_flux, backend, monkeypatch):
    from diffusers import FluxTransformer2DModel

    monkeypatch.setenv("SDNQ_USE_TORCH_COMPILE", "0")
    folder = tiny_flux / "transformer"
    streamed = stream.load(FluxTransformer2DModel, _config(backend), folder, None, torch.bfloat16, str(folder))
    plain = FluxTransformer2DModel.from_pretrained(
        str(folder),
        quantization_config=_config(backend),
        dtype=torch.bfloat16,
        low_cpu_mem_usage=True,
        local_files_only=True,
    ).eval()
    a, b = _flat(streamed), _flat(plain)
    assert a.keys() == b.keys()
    assert [k for k in a if not _same(a[k], b[k])] == []
    quantized = [k for k in a if a[k].dtype == torch.int8]
    assert quantized, "nothing was quantized: the comparison proves nothing"
    assert type(streamed.transformer_blocks[0].attn.to_q) is type(plain.transformer_blocks[0].attn.to_q)
    assert dict(streamed.config) == dict(plain.config)
    assert type(streamed.hf_quantizer) is type(plain.hf_quantizer) and not streamed.training
    assert torch.equal(_forward(streamed), _forward(plain))


def test_the_load_streams_diffusers_models_and_says_which(tiny_flux, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", "on")  # wherever it can, room or not
    one = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "options": {}}
    spec = spec_from_dict({"kind": "granular", "components": {"transformer": one, "text_encoder_2": one}})
    result = load(tiny_flux, spec, cache=None)
    rows = {r["component"]: r for r in result.rows}
    assert rows["transformer"]["streamed"] is True
    assert rows["text_encoder_2"]["streamed"] is False and "transformers" in rows["text_encoder_2"]["stream_reason"]
    assert "streamed" not in rows["vae"]  # not quantized: diffusers' loader, nothing to stream
    assert not [n for n in result.notes if "not streamed" in n]
    monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", "off")  # the escape hatch: diffusers' own loader
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert "streamed" not in rows["transformer"] and rows["transformer"]["quantized_layers"] > 0


def test_by_default_it_streams_only_where_diffusers_own_loader_would_not_fit(tiny_flux, monkeypatch):
    """Streaming is slower (1.3-1.6x the load's CPU time): with room for diffusers' own peak the
    default loads through it; with less host RAM available than that peak, the same load streams."""
    from pipequant.resolver.known import machine

    monkeypatch.delenv("PIPEQUANT_STREAM_LOAD", raising=False)
    one = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "options": {}}
    spec = spec_from_dict({"kind": "granular", "components": {"transformer": one}})
    weights = (tiny_flux / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: 100 * weights)
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert "streamed" not in rows["transformer"] and rows["transformer"]["quantized_layers"] > 0
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: 2 * weights)
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert rows["transformer"]["streamed"] is True and rows["transformer"]["quantized_layers"] > 0


def _extra_tensor(folder: Path) -> None:
    """Add a tensor the model does not have (diffusers warns and loads; streaming must not guess)."""
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors["not_in_the_model.weight"] = torch.zeros(4)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_files_that_are_not_exactly_the_model_fall_back_to_diffusers_with_a_note(tiny_flux, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", "on")
    folder = tmp_path / tiny_flux.name
    shutil.copytree(tiny_flux, folder)
    _extra_tensor(folder / "transformer")
    one = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "options": {}}
    result = load(folder, spec_from_dict({"kind": "granular", "components": {"transformer": one}}), cache=None)
    row = next(r for r in result.rows if r["component"] == "transformer")
    assert row["streamed"] is False and "disagree" in row["stream_reason"]
    assert row["quantized_layers"] > 0  # diffusers quantized it
    assert any("transformer: read by diffusers' own loader, not streamed" in n for n in result.notes)


def test_which_files_diffusers_reads(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    with pytest.raises(stream.CannotStream):
        stream.files(folder, None)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (folder / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert stream.files(folder, None) == [folder / "diffusion_pytorch_model.safetensors"]
    assert stream.files(folder, "fp16") == [folder / "diffusion_pytorch_model.fp16.safetensors"]
    index = {"weight_map": {"a": "diffusion_pytorch_model-2.safetensors", "b": "diffusion_pytorch_model-1.safetensors"}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert [p.name for p in stream.files(folder, None)] == [
        "diffusion_pytorch_model-1.safetensors",
        "diffusion_pytorch_model-2.safetensors",
    ]
    index["weight_map"]["c"] = "../elsewhere.safetensors"
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(stream.CannotStream, match="outside"):
        stream.files(folder, None)
    assert "transformers" in stream.why_not("transformers", folder, None, {})
    assert "device map" in stream.why_not("diffusers", folder, None, {"device_map": {"": "cuda"}})
    assert "pickle" in stream.why_not("diffusers", folder, None, {"use_safetensors": False})


def test_a_file_that_is_not_safetensors_is_refused_before_any_build(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(stream.CannotStream):
        stream._spans(stream.files(folder, None))
