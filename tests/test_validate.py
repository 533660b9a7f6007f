"""Every validation rule, with its code and message, checked against a real tiny pipeline.

Each row: a spec and load settings, the code expected, the field at fault, and words the message
or suggestion must contain (what is wrong and what would be valid).
"""

from __future__ import annotations

import pytest

from pipequant.resolver import BackendSpec, ComponentMap
from pipequant.resolver.decide import validate
from pipequant.resolver.files import inspect_model

G = BackendSpec.make
M = ComponentMap.make

RULES = [
    # what PipelineQuantizationConfig itself rejects
    ("unknown backend", G("bitsandbytes_4", "nf4"), {}, "unknown_backend", "backend", ["bitsandbytes_4bit"]),
    (
        "quant type of another backend",
        G("torchao", "nf4"),
        {},
        "quant_type_wrong_backend",
        "quant_type",
        ["bitsandbytes_4bit", "int8_weight_only"],
    ),
    ("unknown quant type", G("quanto", "int9"), {}, "unknown_quant_type", "quant_type", ["int8"]),
    # what diffusers silently accepts
    (
        "component typo",
        G("torchao", "int8_weight_only", components=["transfomer"]),
        {},
        "unknown_component",
        "components",
        ['did you mean "transformer"'],
    ),
    (
        "map component typo",
        M({"text_encoder3": G("quanto", "int8")}),
        {},
        "unknown_component",
        "map[text_encoder3].component",
        ["text_encoder"],
    ),
    (
        "tokenizer",
        G("quanto", "int8", components=["tokenizer_2"]),
        {},
        "component_not_module",
        "components",
        ["T5Tokenizer", "transformer"],
    ),
    (
        "scheduler in a map",
        M({"scheduler": G("quanto", "int8")}),
        {},
        "component_not_module",
        "map[scheduler].component",
        ["FlowMatchEulerDiscreteScheduler"],
    ),
    (
        "unknown option",
        G("bitsandbytes_4bit", "nf4", options={"double_quantize": True}),
        {},
        "unknown_option",
        "options.double_quantize",
        ['did you mean "double_quant"'],
    ),
    (
        "option of another type",
        G("torchao", "int8_weight_only", options={"group_size": 64}),
        {},
        "option_not_applicable",
        "options.group_size",
        ["int8_weight_only takes"],
    ),
    (
        "mistyped option",
        G("bitsandbytes_4bit", "nf4", options={"double_quant": "yes"}),
        {},
        "option_type",
        "options.double_quant",
        ["true or false"],
    ),
    (
        "option out of range",
        G("bitsandbytes_8bit", "int8", options={"llm_int8_threshold": -1}),
        {},
        "option_range",
        "options.llm_int8_threshold",
        ["0.0 to 100.0"],
    ),
    (
        "option not a choice",
        G("torchao", "int4_weight_only", options={"group_size": 100}),
        {},
        "option_choice",
        "options.group_size",
        ["128"],
    ),
    (
        "skip list not a list",
        G("quanto", "int8", options={"modules_to_not_convert": "proj_out"}),
        {},
        "option_type",
        "options.modules_to_not_convert",
        ["list of module names"],
    ),
    (
        "unknown compute dtype",
        G("bitsandbytes_4bit", "nf4", "bf16"),
        {},
        "compute_dtype_unknown",
        "compute_dtype",
        ["bfloat16"],
    ),
    (
        "dtype the type cannot compute in",
        G("torchao", "int4_weight_only", "float16"),
        {},
        "compute_dtype_unsupported",
        "compute_dtype",
        ["bfloat16"],
    ),
    (
        "loader dtype the type cannot compute in",
        G("torchao", "int4_weight_only"),
        {"dtype": "float32"},
        "compute_dtype_unsupported",
        "compute_dtype",
        ["loader's dtype"],
    ),
    (
        "type needs CUDA",
        G("torchao", "int4_weight_only", components=["transformer"]),
        {"device": "cpu"},
        "needs_cuda",
        "quant_type",
        ["int8_weight_only"],
    ),
    (
        "diffusers bnb needs a GPU",
        G("bitsandbytes_4bit", "nf4", components=["transformer"]),
        {"device": "cpu"},
        "backend_needs_gpu",
        "backend",
        ["transformer", "torchao"],
    ),
    ("device that does not exist", None, {"device": "tpu"}, "device_unknown", "device", ["cuda", "cpu"]),
    ("cuda without a GPU", None, {"device": "cuda:3"}, "device_unavailable", "device", ["cpu"]),
    ("offload on CPU", None, {"device": "cpu", "offload": "model"}, "offload_needs_cuda", "offload", ["none"]),
    (
        "unknown offload",
        None,
        {"device": "cpu", "offload": "sequencial"},
        "offload_unknown",
        "offload",
        ['did you mean "sequential"'],
    ),
    ("unknown load dtype", None, {"dtype": "fp8"}, "dtype_unknown", "dtype", ["bfloat16"]),
    (
        "GGUF in global mode",
        G("gguf", "from_file", gguf_file="x.gguf"),
        {},
        "gguf_in_global",
        "backend",
        ["Per-Component Map"],
    ),
    (
        "GGUF without a file",
        M({"transformer": G("gguf", "from_file")}),
        {},
        "gguf_file_required",
        "map[transformer].gguf_file",
        [".gguf"],
    ),
    (
        "GGUF file missing",
        M({"transformer": G("gguf", "from_file", gguf_file="nope.gguf")}),
        {},
        "gguf_file_missing",
        "map[transformer].gguf_file",
        ["nope.gguf"],
    ),
    (
        "GGUF on a transformers model",
        M({"text_encoder_2": G("gguf", "from_file", gguf_file="FLUX")}),
        {},
        "backend_library",
        "map[text_encoder_2].backend",
        ["transformers"],
    ),
    ("empty component list", G("quanto", "int8", components=[]), {}, "empty_components", "components", ["blank"]),
]


@pytest.mark.parametrize("name,spec,kwargs,code,field,words", RULES, ids=[r[0] for r in RULES])
def test_rule(tiny_flux, flux_gguf, name, spec, kwargs, code, field, words):
    if spec is not None and "FLUX" in str(spec):  # point the GGUF rows at the real file
        spec = M({"text_encoder_2": G("gguf", "from_file", gguf_file=flux_gguf.name)})
    problems = validate(spec, inspect_model(tiny_flux), gguf_roots=[flux_gguf.parent], **kwargs)
    match = [p for p in problems if p.code == code]
    assert match, f"expected {code}, got {[(p.code, p.message) for p in problems]}"
    problem = match[0]
    assert problem.field == field
    text = f"{problem.message} {problem.suggestion}"
    for word in words:
        assert word in text, (word, text)


def test_every_problem_is_reported_at_once(tiny_flux):
    spec = G("torchao", "nf4", "bf16", {"group_sise": 1}, ["transfomer", "tokenizer"])
    codes = {p.code for p in validate(spec, inspect_model(tiny_flux), device="tpu")}
    assert {
        "quant_type_wrong_backend",
        "compute_dtype_unknown",
        "unknown_option",
        "unknown_component",
        "component_not_module",
        "device_unknown",
    } <= codes


def test_valid_specs_have_no_errors(tiny_flux, flux_gguf):
    model = inspect_model(tiny_flux)
    for spec in (
        G("torchao", "int8_weight_only"),
        G("quanto", "int4", components=["transformer"]),
        M({"transformer": G("gguf", "from_file", gguf_file=flux_gguf.name), "vae": None}),
    ):
        assert [
            p for p in validate(spec, model, device="cpu", gguf_roots=[flux_gguf.parent]) if p.severity == "error"
        ] == []


def test_gguf_for_another_model_is_caught(tiny_flux, tiny_sd3, flux_gguf):
    """The FLUX transformer's GGUF aimed at the SD3 transformer: parameter counts differ."""
    spec = M({"transformer": G("gguf", "from_file", gguf_file=flux_gguf.name)})
    problems = validate(spec, inspect_model(tiny_sd3), gguf_roots=[flux_gguf.parent])
    assert [p.code for p in problems] == ["gguf_mismatch"]
    assert "another model" in problems[0].message


def test_truncated_gguf_is_caught(tiny_flux, flux_gguf, tmp_path):
    short = tmp_path / "short.gguf"
    short.write_bytes(flux_gguf.read_bytes()[: flux_gguf.stat().st_size // 2])
    spec = M({"transformer": G("gguf", "from_file", gguf_file="short.gguf")})
    problems = validate(spec, inspect_model(tiny_flux), gguf_roots=[tmp_path])
    assert [p.code for p in problems] == ["gguf_file_unreadable"]
    assert "truncated" in problems[0].message or "not a readable GGUF" in problems[0].message


def test_cuda_rules_with_a_fake_gpu(tiny_flux, monkeypatch):
    """Compute capability is checked against the real device's; fake an 8.0 GPU (A100)."""
    from pipequant.resolver.known import devices

    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(devices, "cuda_device_exists", lambda d: True)
    monkeypatch.setattr(devices, "compute_capability", lambda d: (8, 0))
    spec = G("torchao", "float8_dynamic", components=["transformer"])
    problems = validate(spec, inspect_model(tiny_flux), device="cuda")
    assert [p.code for p in problems] == ["compute_capability"]
    assert "8.9+" in problems[0].message and "8.0" in problems[0].message
    seq = validate(G("bitsandbytes_4bit", "nf4"), inspect_model(tiny_flux), device="cuda", offload="sequential")
    assert "offload_incompatible" in {p.code for p in seq}
