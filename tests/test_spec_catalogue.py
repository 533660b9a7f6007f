"""Catalogue, spec objects and model inspection: the parts that read no weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipequant.resolver import BackendSpec, ComponentMap, ValidationError, spec_from_json
from pipequant.resolver.files import inspect_model
from pipequant.resolver.known import catalogue
from pipequant.resolver.known.backends.base import DIFFUSERS, TRANSFORMERS

G = BackendSpec.make


def test_catalogue_reads_the_libraries_own_mappings():
    from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING as D

    names = catalogue.backend_names()
    assert {"bitsandbytes_4bit", "bitsandbytes_8bit", "torchao", "quanto", "gguf"} <= set(names)
    assert set(names) <= set(D)
    for name in names:
        backend = catalogue.get_backend(name)
        for library in backend.libraries:
            assert backend.config_class(library) is catalogue.config_mapping(library)[name]


@pytest.mark.parametrize(
    "backend,types",
    [
        ("bitsandbytes_4bit", {"nf4", "fp4"}),
        ("bitsandbytes_8bit", {"int8"}),
        ("torchao", {"int8_weight_only", "int8_dynamic", "int4_weight_only", "float8_weight_only", "float8_dynamic"}),
        ("quanto", {"int8", "int4", "int2", "float8"}),
        ("gguf", {"from_file"}),
    ],
)
def test_catalogue_quant_types(backend, types):
    assert {q.name for q in catalogue.get_backend(backend).quant_types} == types


def test_catalogue_describe_is_json_and_complete():
    data = json.loads(json.dumps(catalogue.describe()))
    by_name = {b["name"]: b for b in data["backends"]}
    torchao = by_name["torchao"]
    assert torchao["installed"] is True and torchao["install"] == "pip install torchao"
    int4 = next(q for q in torchao["quant_types"] if q["name"] == "int4_weight_only")
    assert int4["needs_cuda"] is True and int4["compute_dtypes"] == ["bfloat16"] and "group_size" in int4["options"]
    f8 = next(q for q in torchao["quant_types"] if q["name"] == "float8_dynamic")
    assert f8["min_compute_capability"] == [8, 9]
    group = next(o for o in torchao["options"] if o["name"] == "group_size")
    assert group["default"] == 128 and group["choices"] == [32, 64, 128, 256]
    assert by_name["quanto"]["savable"] == ["diffusers"]
    assert by_name["gguf"]["global_mode"] is False and by_name["gguf"]["needs_file"] is True
    # Without a GPU diffusers' bnb loader refuses; transformers' runs on CPU.
    assert by_name["bitsandbytes_4bit"]["cpu"] == {"diffusers": False, "transformers": True}


def test_friendly_names_build_real_config_objects():
    import torch
    import torchao.quantization as ao

    torchao = catalogue.get_backend("torchao")
    cfg = torchao.build_config(DIFFUSERS, "int8_weight_only", torch.bfloat16, {})
    assert isinstance(cfg.quant_type, ao.Int8WeightOnlyConfig)
    cfg = torchao.build_config(TRANSFORMERS, "int4_weight_only", torch.bfloat16, {"group_size": 64})
    assert isinstance(cfg.quant_type, ao.Int4WeightOnlyConfig) and cfg.quant_type.group_size == 64
    bnb = catalogue.get_backend("bitsandbytes_4bit").build_config(
        DIFFUSERS, "nf4", torch.float16, {"double_quant": True, "modules_to_not_convert": ["proj_out"]}
    )
    assert (bnb.bnb_4bit_quant_type, bnb.bnb_4bit_compute_dtype, bnb.bnb_4bit_use_double_quant) == (
        "nf4",
        torch.float16,
        True,
    )
    assert bnb.llm_int8_skip_modules == ["proj_out"]
    quanto_t = catalogue.get_backend("quanto").build_config(TRANSFORMERS, "int4", torch.bfloat16, {})
    quanto_d = catalogue.get_backend("quanto").build_config(DIFFUSERS, "int4", torch.bfloat16, {})
    assert quanto_t.weights == "int4" and quanto_d.weights_dtype == "int4"


def test_backend_not_installed_is_reported(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    assert catalogue.get_backend("torchao").installed() is False
    assert {b["name"]: b["installed"] for b in catalogue.describe()["backends"]}["torchao"] is False


def test_spec_round_trip_and_hash():
    spec = G("torchao", "int8_weight_only", "bfloat16", {"modules_to_not_convert": ["proj_out"]}, ["transformer"])
    again = spec_from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec) and again.fingerprint() == spec.fingerprint()
    cmap = ComponentMap.make({"transformer": spec, "vae": None})
    assert spec_from_json(cmap.to_json()) == cmap
    assert cmap.as_dict()["transformer"].components is None  # a map entry applies to its component only
    # Different options -> different fingerprint; key order does not matter.
    a = G("torchao", "int8_weight_only", options={"x": 1, "y": 2})
    b = G("torchao", "int8_weight_only", options={"y": 2, "x": 1})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != G("torchao", "int8_weight_only", options={"x": 2, "y": 2}).fingerprint()


def test_fingerprint_is_stable_across_processes():
    code = (
        "from pipequant.resolver import BackendSpec, ComponentMap as M;"
        "print(M.make({'transformer': BackendSpec.make('bitsandbytes_4bit','nf4', options={'double_quant': True})})"
        ".fingerprint())"
    )
    here = ComponentMap.make(
        {"transformer": G("bitsandbytes_4bit", "nf4", options={"double_quant": True})}
    ).fingerprint()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", **__import__("os").environ},
    )
    assert out.stdout.strip().splitlines()[-1] == here


@pytest.mark.parametrize(
    "data,code",
    [
        ({"kind": "granular", "components": {}, "backend": "torchao"}, "spec_malformed"),  # both modes
        ({"kind": "global"}, "spec_malformed"),  # neither: no backend
        ({"kind": "global", "backend": "torchao"}, "spec_malformed"),  # missing quant_type kwarg
        ({"kind": "other"}, "spec_malformed"),
        ([], "spec_malformed"),
    ],
)
def test_malformed_spec_json(data, code):
    with pytest.raises(ValidationError) as err:
        spec_from_json(json.dumps(data))
    assert err.value.codes == [code]


def test_map_rejects_the_same_component_twice():
    m = ComponentMap().with_entry("transformer", G("torchao", "int8_weight_only"))
    with pytest.raises(ValidationError) as err:
        m.with_entry("transformer", G("quanto", "int8"))
    assert err.value.codes == ["component_mapped_twice"]
    assert "already mapped upstream" in str(err.value) and "torchao:int8_weight_only" in str(err.value)


def test_inspect_reads_headers_not_weights(tiny_flux, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("weights were read"))
    info = inspect_model(tiny_flux)
    assert info.pipeline_class == "FluxPipeline"
    assert set(info.module_names) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    t = info.components["transformer"]
    assert (t.library, t.class_name, t.is_module) == ("diffusers", "FluxTransformer2DModel", True)
    assert info.components["tokenizer"].is_module is False
    assert t.params > 0 and t.bytes_by_dtype == {"BF16": t.params * 2}
    from pipequant.resolver.files.inspect_model import meta_modules

    linears = [(name, n) for name, n in meta_modules(t) if n is not None]  # every nn.Linear
    assert linears and all(n > 0 for _, n in linears)
    assert sum(n for _, n in linears) < t.params


def test_every_quant_type_has_a_help_line():
    from pipequant.resolver.known import catalogue as cat

    for name in cat.backend_names():
        for quant in cat.get_backend(name).quant_types:
            assert quant.help.strip().endswith("."), (name, quant.name)


def test_quanto_packed_types_on_cpu_need_a_compiler_until_the_extension_is_built(monkeypatch):
    from pipequant.resolver.decide.validate import validate
    from pipequant.resolver.known import catalogue as cat
    from pipequant.resolver.known.backends import quanto
    from pipequant.resolver.links.spec import BackendSpec

    backend = cat.get_backend("quanto")
    spec = BackendSpec.make("quanto", "int4", "auto", {}, None, None)
    monkeypatch.setattr(quanto, "cpp_extension_built", lambda: False)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    problems = [p for p in validate(spec, device="cpu") if p.code == "needs_compiler"]
    assert len(problems) == 1 and problems[0].field == "quant_type"
    assert "no-such-compiler-here" in problems[0].message and "quanto int8" in problems[0].suggestion
    assert "about 5 minutes" in backend.first_use_note("int4", "cpu")
    # int8 needs no extension; a GPU target is not this check's business; a built extension is fine
    assert not backend.target_problems("int8", "cpu") and not backend.first_use_note("int8", "cpu")
    assert not backend.target_problems("int4", "cuda")
    monkeypatch.setattr(quanto, "cpp_extension_built", lambda: True)
    assert not backend.target_problems("int4", "cpu") and not backend.first_use_note("int4", "cpu")
    # with the tools on PATH the check passes, and the note still says what the first load does
    monkeypatch.setattr(quanto, "cpp_extension_built", lambda: False)
    monkeypatch.setattr(quanto, "missing_build_tools", lambda: [])
    assert not backend.target_problems("int4", "cpu") and backend.first_use_note("int4", "cpu")


def test_quanto_extension_check_reads_the_build_folder(tmp_path, monkeypatch):
    import torch

    from pipequant.resolver.known.backends import quanto

    monkeypatch.setattr(quanto, "_cpp_build_dir", lambda: tmp_path)
    assert not quanto.cpp_extension_built()
    (tmp_path / "pytorch_version.txt").write_text(torch.__version__)
    assert not quanto.cpp_extension_built()  # no library yet
    (tmp_path / "quanto_cpp.so").write_bytes(b"")
    assert quanto.cpp_extension_built()
    (tmp_path / "pytorch_version.txt").write_text("1.0.0")
    assert not quanto.cpp_extension_built()  # built for another torch: quanto rebuilds it
