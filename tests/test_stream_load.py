"""Quantizing as the weights stream in (resolver/keep/stream.py) gives exactly what diffusers gives.

Each backend that streams loads the tiny FLUX transformer both ways; every tensor behind the state
dict (tensor subclasses opened up) is compared bit for bit, and so is one forward output. The Load
path streams the diffusers models of a plan and falls back, with a note, where it cannot.
"""

from __future__ import annotations

import json
import shutil
import threading
import types
from pathlib import Path

import pytest
import torch

from pipequant.resolver.keep import load, stream
from pipequant.resolver.links import spec_from_dict


def _config(backend: str):
    import diffusers

    if backend.startswith("torchao"):
        import torchao.quantization as ao

        kind = {
            "torchao": ao.Int8WeightOnlyConfig(),
            "torchao-int8-dynamic": ao.Int8DynamicActivationInt8WeightConfig(),
            "torchao-float8": ao.Float8WeightOnlyConfig(),
            "torchao-per-tensor": ao.Int8WeightOnlyConfig(granularity=ao.PerTensor()),
        }[backend]
        return diffusers.TorchAoConfig(kind)
    if backend.startswith("quanto"):
        return diffusers.QuantoConfig(weights_dtype=backend.partition("-")[2] or "int8")
    sdnq = pytest.importorskip("sdnq")
    kind, _, option = backend.partition("-")[2].partition("-")
    options = {"group": {"group_size": -1}}.get(option, {})
    return sdnq.SDNQConfig(weights_dtype=kind or "int8", **options)


def _rows(backend: str, config):
    from pipequant.resolver.known import catalogue

    return catalogue.get_backend(backend.partition("-")[0]).row_quantizer(config, torch.bfloat16)


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


PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.Size, list, tuple, type, types.FunctionType)


def _layers(model) -> dict:
    """Each module's class and plain attributes (SDNQ's dequantizer opened up, its Nones and forward
    function kept)."""
    out = {}
    for name, module in model.named_modules():
        facts = {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, PLAIN)}
        if hasattr(module, "sdnq_dequantizer"):
            facts["sdnq_dequantizer"] = vars(module.sdnq_dequantizer)
        out[name] = (type(module), facts)
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


def _spy_rows(rows, monkeypatch) -> tuple[list, list]:
    """(rows, thread) of every part of a weight the row quantizer wrote, and the thread of every
    sample it was asked for."""
    parts, samples = [], []
    quantize_into, sample = rows.quantize_into, rows.sample

    def spy_parts(module, part, out):
        parts.append((part.shape[0], threading.current_thread().name))
        return quantize_into(module, part, out)

    def spy_sample(module, weight):
        samples.append(threading.current_thread().name)
        return sample(module, weight)

    monkeypatch.setattr(rows, "quantize_into", spy_parts)
    monkeypatch.setattr(rows, "sample", spy_sample)
    return parts, samples


NOT_BY_ROWS = ("sdnq-int4",)  # packed: streamed whole


@pytest.mark.parametrize(
    "backend",
    [
        "torchao",
        "torchao-int8-dynamic",
        "torchao-float8",
        "torchao-per-tensor",
        "quanto",
        "quanto-float8",
        "sdnq",
        "sdnq-float8_e4m3fn",
        "sdnq-int8-group",
        "sdnq-int4",
    ],
)
def test_streamed_tensors_are_bit_for_bit_those_of_from_pretrained(tiny_flux, backend, monkeypatch, caplog):
    """Streamed as the Load node streams it: by rows where the backend has a row quantizer, a few
    rows at a time (ROW_BYTES made small so the tiny weights are cut in several parts), on the
    loading thread (a worker thread's OpenMP team halved the speed on 2 cores)."""
    from diffusers import FluxTransformer2DModel

    monkeypatch.setenv("SDNQ_USE_TORCH_COMPILE", "0")
    monkeypatch.setattr(stream, "ROW_BYTES", 256)
    folder = tiny_flux / "transformer"
    config = _config(backend)
    rows = _rows(backend, config)
    assert (rows is None) == (backend in NOT_BY_ROWS)
    parts, samples = _spy_rows(rows, monkeypatch) if rows is not None else ([], [])
    streamed = stream.load(FluxTransformer2DModel, config, folder, None, torch.bfloat16, str(folder), rows=rows)
    assert "quantized whole" not in caplog.text
    linears = len([m for m in streamed.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "SDNQLinear"])
    if backend == "torchao-per-tensor":  # one scale for the whole weight: quantized whole, by torchao
        assert linears and len(samples) == linears and parts == []  # each weight looked at, no more
    elif rows is not None:
        assert 0 < len(samples) <= linears  # a sample per weight quantized by rows
        assert len(parts) >= 2 * len(samples), "the weights were not cut in parts"
        assert set(samples) | {thread for _, thread in parts} == {threading.current_thread().name}
        assert not [t for t in threading.enumerate() if t.name.startswith("pipequant-keep")]  # the keeper is gone
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
    quantized = [k for k in a if a[k].element_size() == 1]  # int8 or float8 data
    assert quantized, "nothing was quantized: the comparison proves nothing"
    assert _layers(streamed) == _layers(plain)
    assert dict(streamed.config) == dict(plain.config)
    assert type(streamed.hf_quantizer) is type(plain.hf_quantizer) and not streamed.training
    assert torch.equal(_forward(streamed), _forward(plain))


def _stream_counting(tiny_flux, backend: str, monkeypatch) -> tuple[set, list]:
    """The tiny transformer streamed with `backend`, checked bit for bit against `from_pretrained`:
    the row lengths of its quantized weights, and the row counts its library was called with."""
    from diffusers import FluxTransformer2DModel

    monkeypatch.setattr(stream, "ROW_BYTES", 256)
    folder = tiny_flux / "transformer"
    config = _config(backend)
    rows = _rows(backend, config)
    calls, quantize = [], rows.quantize

    def spy(module, part):
        calls.append(part.shape[0])
        return quantize(module, part)

    monkeypatch.setattr(rows, "quantize", spy)
    streamed = stream.load(FluxTransformer2DModel, config, folder, None, torch.bfloat16, str(folder), rows=rows)
    plain = FluxTransformer2DModel.from_pretrained(
        str(folder), quantization_config=_config(backend), dtype=torch.bfloat16, local_files_only=True
    )
    a, b = _flat(streamed), _flat(plain)
    assert a.keys() == b.keys() and [k for k in a if not _same(a[k], b[k])] == []
    quantized = [m.weight for m in streamed.modules() if hasattr(getattr(m, "weight", None), "__tensor_flatten__")]
    return {w.shape[1] for w in quantized}, calls


@pytest.mark.parametrize("backend", ["torchao", "torchao-int8-dynamic", "quanto"])
def test_int8_rows_are_written_without_the_library_once_checked_against_it(tiny_flux, backend, monkeypatch):
    """The library quantizes two rows once per row length (the sample the written arithmetic is
    checked against); every part is then written by PipeQuant (torchao `_int8_rows`, quanto
    `_qint8_rows`), and the tensors are the library's, bit for bit."""
    widths, calls = _stream_counting(tiny_flux, backend, monkeypatch)
    assert widths and calls == [2] * len(widths)


@pytest.mark.parametrize("backend, writer", [("torchao", "_int8_rows"), ("quanto", "_qint8_rows")])
def test_where_the_arithmetic_differs_from_the_library_it_quantizes_every_part(tiny_flux, backend, writer, monkeypatch):
    """A library whose int8 arithmetic has changed (here: the written one made wrong) is caught by
    the check against its own sample; the library then quantizes each part itself."""
    import importlib

    module = importlib.import_module(f"pipequant.resolver.known.backends.{backend}")
    right = getattr(module, writer)

    def wrong(rows, out, scratch, **kwargs):
        right(rows, out, scratch, **kwargs)
        next(t for t in out.values() if t.dtype == torch.int8).neg_()

    monkeypatch.setattr(module, writer, wrong)
    widths, calls = _stream_counting(tiny_flux, backend, monkeypatch)
    assert calls.count(2) >= len(widths) and len(calls) > 2 * len(widths)  # samples, then every part


def _edge_rows(dtype) -> torch.Tensor:
    """Rows that test the arithmetic's corners: zeros of both signs, subnormals, values past the
    dtype's range, exact halves after scaling, an infinity, a NaN."""
    width = 64
    gen = torch.Generator().manual_seed(0)
    rows = [
        torch.zeros(width),
        -torch.zeros(width),
        torch.full((width,), 1e-30),
        torch.full((width,), -1e-40),
        torch.randn(width, generator=gen) * 1e30,
        torch.linspace(-127.5, 127.5, width),
        torch.arange(width) - 32.5,
        torch.randn(width, generator=gen) * 1e-3,
        torch.randn(width, generator=gen),
        torch.cat([torch.tensor([float("inf")]), torch.randn(width - 1, generator=gen)]),
        torch.cat([torch.tensor([float("nan")]), torch.randn(width - 1, generator=gen)]),
    ]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kind", ["weight_only", "dynamic", "dynamic-reduce_range"])
def test_int8_rows_are_torchaos_own_on_every_corner(dtype, kind):
    import torchao.quantization as ao
    from torchao.quantization import quant_api

    from pipequant.resolver.known.backends.torchao import _int8_rows

    config, function = {
        "weight_only": (ao.Int8WeightOnlyConfig(), quant_api._int8_weight_only_quantize_tensor),
        "dynamic": (
            ao.Int8DynamicActivationInt8WeightConfig(),
            quant_api._int8_dynamic_activation_int8_weight_quantize_tensor,
        ),
        "dynamic-reduce_range": (
            ao.Int8DynamicActivationInt8WeightConfig(reduce_range=True),
            quant_api._int8_dynamic_activation_int8_weight_quantize_tensor,
        ),
    }[kind]
    rows = _edge_rows(dtype)
    theirs = function(rows, config)
    mine = {n: torch.full_like(getattr(theirs, n), 7) for n in ("qdata", "scale", "zero_point")}
    _int8_rows(rows, mine, {}, (-64, 63) if kind.endswith("reduce_range") else (-128, 127))
    assert torch.equal(mine["qdata"], theirs.qdata) and torch.equal(mine["zero_point"], theirs.zero_point)
    assert torch.equal(mine["scale"].nan_to_num(), theirs.scale.nan_to_num())  # the NaN row's scale is NaN
    assert theirs.scale.isnan().sum() == mine["scale"].isnan().sum() == 1


def test_without_madvise_the_weights_are_read_into_a_buffer_with_the_same_result(tiny_flux, monkeypatch):
    """Mapped from the file where its pages can be handed back after each weight (Linux, macOS), else
    read into one reused buffer (Windows): the same tensors."""
    from diffusers import FluxTransformer2DModel

    monkeypatch.setattr(stream, "ROW_BYTES", 256)
    folder = tiny_flux / "transformer"
    loaded = {}
    for can in (True, False):
        monkeypatch.setattr(stream, "CAN_RELEASE_PAGES", can)
        config = _config("torchao")
        loaded[can] = _flat(
            stream.load(
                FluxTransformer2DModel, config, folder, None, torch.bfloat16, str(folder), rows=_rows("torchao", config)
            )
        )
    assert loaded[True].keys() == loaded[False].keys()
    assert [k for k in loaded[True] if not _same(loaded[True][k], loaded[False][k])] == []


def test_sdnq_quantizes_by_rows_only_where_its_choices_keep_rows_apart():
    """A low-rank fit (SVD, random: not reproducible even by SDNQ itself), a packed or unsigned type,
    a quantized matmul (transposed weights): the whole weight decides, so no row quantizer."""
    sdnq = pytest.importorskip("sdnq")
    from pipequant.resolver.known import catalogue

    backend = catalogue.get_backend("sdnq")
    for kind, options in [("int8", {}), ("float8_e4m3fn", {}), ("int8", {"group_size": 64})]:
        assert backend.row_quantizer(sdnq.SDNQConfig(weights_dtype=kind, **options), torch.bfloat16) is not None
    for kind, options in [
        ("int8", {"use_svd": True}),
        ("int8", {"use_quantized_matmul": True}),
        ("int8", {"use_stochastic_rounding": True}),
        ("int4", {}),
        ("uint4", {}),
    ]:
        assert backend.row_quantizer(sdnq.SDNQConfig(weights_dtype=kind, **options), torch.bfloat16) is None


def test_the_load_streams_diffusers_models_and_says_which(tiny_flux, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", "on")  # wherever it can, room or not
    one = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "options": {}}
    spec = spec_from_dict({"kind": "granular", "components": {"transformer": one, "text_encoder_2": one}})
    result = load(tiny_flux, spec, cache=None)
    rows = {r["component"]: r for r in result.rows}
    assert rows["transformer"]["streamed"] is True
    assert rows["text_encoder_2"]["streamed"] is True  # transformers models too (test_stream_transformers.py)
    assert "streamed" not in rows["vae"]  # not quantized: diffusers' loader, nothing to stream
    assert not [n for n in result.notes if "not streamed" in n]
    monkeypatch.setenv("PIPEQUANT_STREAM_LOAD", "off")  # the escape hatch: diffusers' own loader
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert "streamed" not in rows["transformer"] and rows["transformer"]["quantized_layers"] > 0


@pytest.mark.parametrize(
    "backend,quant_type",
    [
        ("torchao", "int8_weight_only"),
        ("torchao", "float8_weight_only"),
        ("quanto", "int8"),
        ("quanto", "float8"),
        ("sdnq", "int8"),
        ("sdnq", "float8_e4m3fn"),
    ],
)
def test_by_default_a_backend_that_quantizes_by_rows_streams(tiny_flux, backend, quant_type, monkeypatch):
    """Quantized by rows, streaming is at par with diffusers' loader (bench/results/peak_load), so
    the default streams even with room for diffusers' own peak."""
    from pipequant.resolver.known import machine

    if backend == "sdnq":
        pytest.importorskip("sdnq")
        monkeypatch.setenv("SDNQ_USE_TORCH_COMPILE", "0")
    monkeypatch.delenv("PIPEQUANT_STREAM_LOAD", raising=False)
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: 1 << 50)
    one = {"backend": backend, "quant_type": quant_type, "compute_dtype": "auto", "options": {}}
    spec = spec_from_dict({"kind": "granular", "components": {"transformer": one}})
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert rows["transformer"]["streamed"] is True and rows["transformer"]["quantized_layers"] > 0


def test_by_default_other_backends_stream_only_where_the_library_loader_would_not_fit(tiny_flux, monkeypatch):
    """Without a row quantizer streaming is slower (1.3-1.6x the load's CPU time): with room for
    diffusers' own peak the default loads through it; with less host RAM available than that peak,
    the same load streams."""
    pytest.importorskip("sdnq")
    from pipequant.resolver.known import machine

    monkeypatch.delenv("PIPEQUANT_STREAM_LOAD", raising=False)
    monkeypatch.setenv("SDNQ_USE_TORCH_COMPILE", "0")
    one = {"backend": "sdnq", "quant_type": "int4", "compute_dtype": "auto", "options": {}}  # packed: not by rows
    spec = spec_from_dict({"kind": "granular", "components": {"transformer": one}})
    weights = (tiny_flux / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: 100 * weights)
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert "streamed" not in rows["transformer"] and rows["transformer"]["quantized_layers"] > 0
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: 2 * weights)
    rows = {r["component"]: r for r in load(tiny_flux, spec, cache=None).rows}
    assert rows["transformer"]["streamed"] is True and rows["transformer"]["quantized_layers"] > 0


def test_quantized_by_rows_under_inference_mode_as_comfyui_runs_nodes(tiny_flux, monkeypatch, caplog):
    """ComfyUI runs a node under torch.inference_mode: the keeper thread allocates in the same mode,
    so the tensors are inference tensors as the library's are, and the same."""
    from diffusers import FluxTransformer2DModel

    monkeypatch.setattr(stream, "ROW_BYTES", 256)
    folder = tiny_flux / "transformer"
    with torch.inference_mode():
        streamed = stream.load(
            FluxTransformer2DModel,
            _config("torchao"),
            folder,
            None,
            torch.bfloat16,
            str(folder),
            rows=_rows("torchao", _config("torchao")),
        )
        plain = FluxTransformer2DModel.from_pretrained(
            str(folder), quantization_config=_config("torchao"), dtype=torch.bfloat16, local_files_only=True
        )
    a, b = _flat(streamed), _flat(plain)
    assert a.keys() == b.keys() and [k for k in a if not _same(a[k], b[k])] == []
    assert [k for k in a if a[k].is_inference() != b[k].is_inference()] == []
    assert any(t.is_inference() for t in a.values())
    assert "quantized whole" not in caplog.text  # by rows, not by the library after a failure


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
    assert "no model.safetensors" in stream.why_not("transformers", folder, None, {})  # transformers' file names
    assert "device map" in stream.why_not("diffusers", folder, None, {"device_map": {"": "cuda"}})
    assert "pickle" in stream.why_not("diffusers", folder, None, {"use_safetensors": False})


def test_a_file_that_is_not_safetensors_is_refused_before_any_build(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(stream.CannotStream):
        stream._spans(stream.files(folder, None))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_qint8_rows_are_quantos_own_on_every_corner(dtype):
    from optimum.quanto import QLinear, qint8

    from pipequant.resolver.known.backends.quanto import _qint8_rows, _QuantoRows

    rows = _edge_rows(dtype)
    module = QLinear(rows.shape[1], rows.shape[0], bias=False, weights=qint8, dtype=dtype)
    theirs = _QuantoRows().parts(_QuantoRows().quantize(module, rows))
    mine = {n: torch.full_like(t, 7) for n, t in theirs.items()}
    _qint8_rows(rows, mine, {})
    assert torch.equal(mine["_data"], theirs["_data"])
    assert torch.equal(mine["_scale"].nan_to_num(), theirs["_scale"].nan_to_num())  # the NaN row's scale is NaN
    assert theirs["_scale"].isnan().sum() == mine["_scale"].isnan().sum() == 1
