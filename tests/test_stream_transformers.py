"""transformers models (T5, CLIP) quantized as their weights stream in (stream.load_transformers) give
exactly what transformers' own `from_pretrained` gives, and the Load path streams them.

Each backend that streams loads the tiny FLUX's text encoders both ways; every tensor behind the
state dict (tensor subclasses opened up) is compared bit for bit, and so is one forward output.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_stream_load import _flat, _same

from pipequant.resolver.keep import load, stream
from pipequant.resolver.known import catalogue
from pipequant.resolver.links import spec_from_dict

QUANT = {"torchao": "int8_weight_only", "quanto": "int8", "sdnq": "int8"}


def _config(backend: str):
    if backend == "sdnq":
        pytest.importorskip("sdnq")
    return catalogue.get_backend(backend).config_for("transformers", QUANT[backend], torch.bfloat16, {})


def _encode(model) -> torch.Tensor:
    ids = torch.arange(2, 9).unsqueeze(0) % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("backend", ["torchao", "quanto", "sdnq"])
@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2"])
def test_streamed_encoders_are_bit_for_bit_those_of_from_pretrained(tiny_flux, backend, component, monkeypatch):
    from pipequant.resolver.files.inspect_model import inspect_model

    monkeypatch.setenv("SDNQ_USE_TORCH_COMPILE", "0")
    info = inspect_model(tiny_flux).components[component]
    cls, folder = info.model_class(), tiny_flux / component
    streamed = stream.load_transformers(cls, _config(backend), folder, None, torch.bfloat16, str(folder))
    plain = cls.from_pretrained(
        str(folder), quantization_config=_config(backend), dtype=torch.bfloat16, local_files_only=True
    ).eval()
    a, b = _flat(streamed), _flat(plain)
    assert a.keys() == b.keys()
    assert [k for k in a if not _same(a[k], b[k])] == []
    assert [k for k in a if a[k].dtype == torch.int8], "nothing was quantized: the comparison proves nothing"
    assert streamed.config.to_dict() == plain.config.to_dict()
    assert streamed.name_or_path == str(folder) and not streamed.training
    assert torch.equal(_encode(streamed), _encode(plain))


def test_the_load_streams_text_encoders_too(tiny_flux, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", "on")
    one = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "options": {}}
    spec = spec_from_dict({"kind": "granular", "components": {"text_encoder": one, "text_encoder_2": one}})
    with torch.inference_mode():  # as ComfyUI runs nodes
        rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    for name in ("text_encoder", "text_encoder_2"):
        assert rows[name]["streamed"] is True and rows[name]["quantized_layers"] > 0


def test_a_pre_quantized_or_misnamed_encoder_falls_back_to_transformers_with_the_reason(tiny_flux, tmp_path):
    folder = tmp_path / "text_encoder_2"
    shutil.copytree(tiny_flux / "text_encoder_2", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "torchao"}}))
    cls = __import__("transformers").T5EncoderModel
    with pytest.raises(stream.CannotStream, match="pre-quantized"):
        stream.load_transformers(cls, _config("torchao"), folder, None, torch.bfloat16, str(folder))
    for path in folder.glob("model*.safetensors*"):
        path.rename(path.with_name(path.name.replace("model", "weights")))
    assert "no model.safetensors" in stream.why_not("transformers", folder, None, {})


def test_an_encoder_that_cannot_stream_is_named_in_the_notes_where_streaming_was_wanted(
    tiny_flux, tmp_path, monkeypatch
):
    """Asked for (`on`, or too little RAM for the library's own peak): the reason is in the row and
    the notes. By default with room to spare nothing would have streamed, so nothing is said."""
    from safetensors.torch import load_file, save_file

    from pipequant.resolver.known import machine

    folder = tmp_path / tiny_flux.name
    shutil.copytree(tiny_flux, folder)
    path = folder / "text_encoder_2" / "model.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"format": "pt", "written_by": "someone"})
    one = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "options": {}}
    spec = spec_from_dict({"kind": "granular", "components": {"text_encoder_2": one}})

    def text_encoder_2(result):
        return next(r for r in result.rows if r["component"] == "text_encoder_2")

    for mode, ram in (("on", None), ("auto", path.stat().st_size)):
        monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", mode)
        monkeypatch.setattr(machine, "available_ram_bytes", lambda ram=ram: ram)
        result = load(folder, spec, cache=None)
        row = text_encoder_2(result)
        assert row["streamed"] is False and "metadata" in row["stream_reason"] and row["quantized_layers"] > 0
        assert any("text_encoder_2: read by transformers' own loader, not streamed" in n for n in result.notes)
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: 1000 * path.stat().st_size)
    result = load(folder, spec, cache=None)
    assert "streamed" not in text_encoder_2(result) and not [n for n in result.notes if "not streamed" in n]
