"""The editor's HTTP routes, through aiohttp's test client against the real handlers (no ComfyUI)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import types

import pytest
from aiohttp import web
from helpers import call, routes_client

from pipequant.nodes import routes
from pipequant.resolver.known import catalogue
from pipequant.resolver.links.spec import BackendSpec, ComponentMap


@pytest.fixture
def models(monkeypatch, models_root, tiny_flux):
    """PIPEQUANT_MODELS -> the session models root (holding tiny-flux), as nodes/host.py reads it."""
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.delenv("PIPEQUANT_GGUF", raising=False)
    return models_root


def backend(node="1", backend="torchao", quant_type="int8_weight_only", **fields):
    """A Quantization Backend as the editor sends it: raw widget text."""
    return {
        "kind": "global",
        "node": node,
        "backend": backend,
        "quant_type": quant_type,
        "compute_dtype": "auto",
        "components": "",
        "options": "{}",
        "gguf_file": "none",
        **fields,
    }


def component_map(node, component, config=None, upstream=None):
    return {"kind": "map", "node": node, "component": component, "config": config, "map": upstream}


def codes(body, node=...):
    return [p["code"] for p in body["problems"] if node is ... or p["node"] == node]


# -- GET /pipequant/backends -----------------------------------------------------------------
def test_backends_is_the_catalogue():
    status, body = call("GET", "/pipequant/backends")
    assert status == 200
    assert [b["name"] for b in body["backends"]] == catalogue.backend_names()
    gguf = next(b for b in body["backends"] if b["name"] == "gguf")
    assert gguf["needs_file"] and not gguf["global_mode"] and gguf["install"] == "pip install gguf"
    assert body["compute_dtypes"][0] == "auto"


def test_the_web_tests_catalogue_fixture_matches_the_catalogue():
    """web/tests/fixtures/catalogue.json feeds `node --test`; it must say what the server says
    (apart from what depends on this machine: installed, cpu)."""
    from pathlib import Path

    def shape(data):
        return [{k: v for k, v in b.items() if k not in ("installed", "cpu")} for b in data["backends"]]

    fixture = json.loads((Path(routes.__file__).parents[1] / "web/tests/fixtures/catalogue.json").read_text())
    assert shape(fixture) == shape(catalogue.describe()), "regenerate web/tests/fixtures/catalogue.json (see its test)"


# -- GET /pipequant/components ---------------------------------------------------------------
def test_components_of_a_pipeline(models):
    status, body = call("GET", "/pipequant/components", params={"model": "tiny-flux"})
    assert status == 200
    assert body["pipeline_class"] == "FluxPipeline"
    by_name = {c["name"]: c for c in body["components"]}
    assert {"transformer", "text_encoder", "text_encoder_2", "vae", "tokenizer", "scheduler"} <= set(by_name)
    assert by_name["transformer"]["is_module"] and by_name["transformer"]["bytes"] > 0
    assert by_name["transformer"]["params"] > 0 and by_name["transformer"]["class"] == "FluxTransformer2DModel"
    assert not by_name["tokenizer"]["is_module"] and by_name["tokenizer"]["bytes"] == 0


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../tiny-flux",
        "/etc",
        "tiny-flux/../..",
        "a\\b",
        "nope",
        "x" * 600,
        "tiny-flux/transformer/../../..",
        "%2e%2e/%2e%2e",
    ],
)
def test_components_refuses_names_outside_the_model_list(models, monkeypatch, name):
    monkeypatch.setattr(routes, "inspect_model", lambda folder: pytest.fail(f"inspected {folder}"))
    status, body = call("GET", "/pipequant/components", params={"model": name})
    assert status == 400
    assert body["error"] and body["problems"], body


def test_components_refuses_a_link_leaving_the_model_folder(models, monkeypatch, tmp_path, tiny_flux):
    outside = tmp_path / "outside-pipeline"
    shutil.copytree(tiny_flux, outside)
    link = models / "linked-out"
    half = models / "half-linked"
    try:
        os.symlink(outside, link)
        half.mkdir()
        shutil.copy(tiny_flux / "model_index.json", half / "model_index.json")
        os.symlink(outside / "transformer", half / "transformer")
        monkeypatch.setattr(routes, "inspect_model", lambda folder: pytest.fail(f"inspected {folder}"))
        for name in ("linked-out", "half-linked"):
            status, body = call("GET", "/pipequant/components", params={"model": name})
            assert status == 400 and body["problems"][0]["code"] == "model_outside_roots", body
        # Not silently missing: the editor's catalogue and the startup log say which and why.
        status, body = call("GET", "/pipequant/backends")
        refused = {r["name"]: r["reason"] for r in body["editor"]["refused"]}
        assert "linked-out" in refused and "leaves the model folder" in refused["linked-out"], refused
        assert "tiny-flux" not in refused
        assert ("linked-out", refused["linked-out"]) in routes.log_refused_folders()
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(half, ignore_errors=True)


def test_components_needs_a_model_parameter(models):
    status, body = call("GET", "/pipequant/components")
    assert status == 400 and body["problems"][0]["field"] == "model"


# -- POST /pipequant/validate ----------------------------------------------------------------
def test_validate_a_good_plan(models):
    status, body = call(
        "POST",
        "/pipequant/validate",
        json={"model": "tiny-flux", "spec": backend(), "dtype": "bfloat16", "device": "cpu"},
    )
    assert status == 200 and body["ok"] and body["problems"] == []
    assert body["spec"]["backend"] == "torchao"


def test_validate_accepts_spec_to_dict(models):
    spec = ComponentMap.make({"transformer": BackendSpec.make("torchao", "int8_weight_only"), "vae": None})
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": spec.to_dict()})
    assert status == 200 and body["ok"], body


def test_validate_tags_each_problem_with_its_node(models):
    chain = component_map(
        "12",
        "text_encoder_2",
        backend("11", quant_type="nf4"),
        component_map("10", "transfomer", backend("9", options='{"group_size": 3')),
    )
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": chain, "dtype": "float8"})
    assert status == 200 and not body["ok"]
    assert codes(body, "9") == ["options_not_json"]
    assert codes(body, "11") == ["quant_type_wrong_backend"]
    assert codes(body, "10") == ["unknown_component"]
    assert codes(body, None) == ["dtype_unknown"]  # the Load node's own input
    typo = next(p for p in body["problems"] if p["code"] == "unknown_component")
    assert typo["input"] == "component" and "transformer" in typo["suggestion"]
    wrong = next(p for p in body["problems"] if p["code"] == "quant_type_wrong_backend")
    assert wrong["input"] == "quant_type" and wrong["field"] == "map[text_encoder_2].quant_type"


def test_validate_runs_the_map_nodes_own_rules(models):
    twice = component_map("3", "transformer", backend("2"), component_map("1", "transformer", backend("2")))
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": twice})
    assert codes(body) == ["component_mapped_twice"] and body["problems"][0]["node"] == "3"
    listed = component_map("5", "transformer", backend("4", components="transformer, vae"))
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": listed})
    assert codes(body, "5") == ["components_in_map"]
    backwards = component_map("7", "vae", None, backend("6"))
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": backwards})
    assert codes(body, "7") == ["expected_map"]
    bad_name = component_map("8", "text encoder", backend("6"))
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": bad_name})
    assert codes(body, "8") == ["component_syntax"]


def test_each_problem_says_which_part_of_the_plan_it_is(models):
    """The structured location agrees with the node it is on: a Map's own rules are part "map",
    the Backend of a map entry part "backend" with the entry, the loader's inputs part "load"."""
    cases = [
        (component_map("3", "transformer", backend("2"), component_map("1", "transformer", backend("2"))), "3"),
        (component_map("5", "transformer", backend("4", components="transformer, vae")), "5"),
        (component_map("7", "vae", None, backend("6")), "7"),
        (component_map("8", "text encoder", backend("6")), "8"),
        (component_map("9", "transfomer", backend("6")), "9"),
    ]
    for spec, map_node in cases:
        _, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": spec})
        assert [(p["node"], p["part"]) for p in body["problems"]] == [(map_node, "map")], body
    entry = component_map("11", "text_encoder_2", backend("10", quant_type="nf4"))
    _, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": entry, "dtype": "float8"})
    placed = {(p["node"], p["part"], p["entry"], p["input"]) for p in body["problems"]}
    assert placed == {("10", "backend", "text_encoder_2", "quant_type"), (None, "load", None, "dtype")}, body


def test_validate_global_problems_go_to_the_backend_node(models):
    spec = backend("4", backend="gguf", quant_type="from_file", components="transformer, vea", options='{"x": 1}')
    status, body = call("POST", "/pipequant/validate", json={"model": "tiny-flux", "spec": spec, "device": "cpu"})
    assert status == 200
    assert set(codes(body, "4")) >= {"gguf_in_global", "unknown_component", "unknown_option", "gguf_file_required"}
    assert codes(body, None) == []


def test_validate_honours_allow_pickle(models, tmp_path, tiny_flux):
    pickled = models / "pickled-flux"
    try:
        shutil.copytree(tiny_flux, pickled)
        weights = pickled / "vae" / "diffusion_pytorch_model.safetensors"
        weights.rename(weights.with_suffix(".bin"))
        status, body = call("POST", "/pipequant/validate", json={"model": "pickled-flux", "spec": None})
        assert codes(body, None) == ["pickle_only"]
        status, body = call(
            "POST", "/pipequant/validate", json={"model": "pickled-flux", "spec": None, "allow_pickle": True}
        )
        assert status == 200 and body["ok"], body
    finally:
        shutil.rmtree(pickled, ignore_errors=True)


def test_validate_without_a_model_checks_the_spec_alone(models):
    status, body = call("POST", "/pipequant/validate", json={"spec": backend("1", quant_type="int9")})
    assert status == 200 and codes(body, "1") == ["unknown_quant_type"]


@pytest.mark.parametrize("name", ["../tiny-flux", "/etc/passwd", "missing"])
def test_validate_reports_bad_model_names_as_problems(models, monkeypatch, name):
    monkeypatch.setattr(routes, "inspect_model", lambda folder: pytest.fail(f"inspected {folder}"))
    status, body = call("POST", "/pipequant/validate", json={"model": name, "spec": None})
    assert status == 200 and codes(body, None)[0] in ("model_outside_roots", "model_not_found")


# -- malformed requests ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        b"[" * 30000 + b"]" * 30000,
        json.dumps({"model": 5}).encode(),
        json.dumps({"spec": 5}).encode(),
        json.dumps({"spec": {"kind": "nope"}}).encode(),
        json.dumps({"spec": {"kind": "map", "component": 3}}).encode(),
        json.dumps({"spec": {"backend": 1, "quant_type": "x"}}).encode(),
        json.dumps({"spec": backend(node=[1])}).encode(),
        json.dumps({"dtype": {"a": 1}}).encode(),
        json.dumps({"allow_pickle": "yes"}).encode(),
    ],
)
def test_malformed_bodies_get_400(models, data):
    for path in ("/pipequant/validate", "/pipequant/estimate"):
        status, body = call("POST", path, data=data, headers={"Content-Type": "application/json"})
        assert status == 400, (path, body)
        assert isinstance(body["error"], str) and body["problems"], body


def test_a_map_chain_too_deep_gets_400(models):
    spec = None
    for i in range(routes.MAX_CHAIN + 5):
        spec = component_map(str(i), f"c{i}", None, spec)
    status, body = call("POST", "/pipequant/validate", json={"spec": spec})
    assert status == 400 and "chained" in body["error"]


def test_huge_bodies_are_refused(models):
    huge = json.dumps({"spec": backend(options="x" * (routes.MAX_BODY + 10))}).encode()
    status, body = call("POST", "/pipequant/validate", data=huge)
    assert status == 413 and body["problems"][0]["code"] == "body_too_large"

    async def chunks():  # no Content-Length: the cap still holds
        for _ in range(routes.MAX_BODY // 8192 + 2):
            yield b" " * 8192

    status, body = call("POST", "/pipequant/estimate", data=chunks())
    assert status == 413


def test_wrong_methods_are_refused():
    async def run():
        async with routes_client() as client:
            return (await client.get("/pipequant/validate")).status, (await client.post("/pipequant/backends")).status

    assert asyncio.run(run()) == (405, 405)


# -- POST /pipequant/estimate ----------------------------------------------------------------
def test_estimate_before_and_after(models):
    status, body = call(
        "POST",
        "/pipequant/estimate",
        json={
            "model": "tiny-flux",
            "spec": backend(components="transformer, text_encoder_2"),
            "dtype": "bfloat16",
            "device": "cpu",
        },
    )
    assert status == 200 and body["ok"], body
    rows = {r["component"]: r for r in body["estimate"]["components"]}
    assert set(rows) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    for name in ("transformer", "text_encoder_2"):
        assert rows[name]["action"] == "quantize" and rows[name]["bytes_after"] < rows[name]["bytes_before"]
    assert rows["vae"]["bytes_after"] == rows["vae"]["bytes_before"]
    total = body["estimate"]["total"]
    assert total["bytes_before"] == sum(r["bytes_before"] for r in rows.values())
    assert total["bytes_after"] == sum(r["bytes_after"] for r in rows.values()) < total["bytes_before"]


def test_estimate_validates_once(models, monkeypatch):
    import importlib

    prepare_module = importlib.import_module("pipequant.resolver.decide.prepare")  # every surface's one path
    calls = []
    real = prepare_module.validate

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "validate", counting)
    body = routes.estimate({"model": "tiny-flux", "spec": backend(components="transformer"), "device": "cpu"})
    assert body["ok"] and body["estimate"] is not None
    assert len(calls) == 1


def test_estimate_without_quantization_and_in_float32(models):
    status, body = call("POST", "/pipequant/estimate", json={"model": "tiny-flux", "spec": None, "dtype": "float32"})
    total = body["estimate"]["total"]
    assert status == 200 and total["bytes_before"] == total["bytes_after"] > 0
    assert body["estimate"]["dtype"] == "float32"


def test_estimate_of_a_broken_plan_is_null_with_its_problems(models):
    status, body = call(
        "POST",
        "/pipequant/estimate",
        json={"model": "tiny-flux", "spec": backend("3", quant_type="int4_weight_only"), "device": "cpu"},
    )
    assert status == 200 and body["estimate"] is None and codes(body, "3") == ["needs_cuda"]


def test_estimate_needs_a_model(models):
    status, body = call("POST", "/pipequant/estimate", json={"spec": backend()})
    assert status == 400 and body["problems"][0]["field"] == "model"


# -- registration ------------------------------------------------------------------------------
def test_register_without_comfyui_does_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "server", None)  # `import server` raises ImportError
    assert routes.register() is False


def test_register_adds_the_routes_to_the_prompt_server(monkeypatch):
    table = web.RouteTableDef()
    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(routes=table)})
    monkeypatch.setitem(sys.modules, "server", fake)
    assert routes.register() is True
    assert {(r.method, r.path) for r in table} == {(m, p) for m, p, _ in routes.ROUTES}


# -- the Save node's rules in the live check ---------------------------------------------------
def _flux_maps(backend_name, quant_type):
    """Two maps (transformer, text_encoder_2) chained into Load, both fed by Backend node "1"."""
    shared = backend("1", backend_name, quant_type)
    return component_map("3", "text_encoder_2", shared, component_map("2", "transformer", shared))


def test_estimate_with_a_save_node_flags_what_cannot_be_saved(models):
    spec = _flux_maps("quanto", "int8")
    body = {"model": "tiny-flux", "spec": spec, "save": [{"node": "9", "folder_name": "flux-saved"}]}
    status, result = call("POST", "/pipequant/estimate", json=body)
    assert status == 200 and result["estimate"] is not None and not result["ok"]
    # quanto cannot save the transformers-side text_encoder_2: on the Backend and on the Save node
    on_backend = [p for p in result["problems"] if p["node"] == "1" and p["code"] != "backend_deprecated"]
    assert [(p["code"], p["component"], p["input"]) for p in on_backend] == [
        ("not_savable", "text_encoder_2", "backend")
    ]
    assert codes(result, "9") == ["not_savable"]
    # without a Save node downstream the same plan is fine
    status, result = call("POST", "/pipequant/estimate", json={"model": "tiny-flux", "spec": spec})
    assert status == 200 and result["ok"]
    # warnings only: quanto's deprecation (on the Backend node) and the measured slow plan
    assert {(p["code"], p["severity"]) for p in result["problems"]} == {
        ("backend_deprecated", "warning"),
        ("slow_plan", "warning"),
    }


def test_estimate_with_a_save_node_checks_its_folder_name(models):
    spec = _flux_maps("torchao", "int8_weight_only")
    status, result = call(
        "POST",
        "/pipequant/estimate",
        json={"model": "tiny-flux", "spec": spec, "save": [{"node": 9, "folder_name": "../escape"}]},
    )
    assert status == 200 and codes(result) == ["folder_name_invalid"] and result["problems"][0]["node"] == 9
    _, result = call(
        "POST",
        "/pipequant/estimate",
        json={"model": "tiny-flux", "spec": spec, "save": [{"node": "9", "folder_name": "tiny-flux"}]},
    )
    assert codes(result, "9") == ["folder_exists"]
    _, result = call(
        "POST",
        "/pipequant/estimate",
        json={"model": "tiny-flux", "spec": spec, "save": [{"node": "9", "folder_name": "new-one"}]},
    )
    assert result["ok"], result


@pytest.mark.parametrize(
    "save",
    [
        "x",
        [1],
        [{"node": [], "folder_name": "a"}],
        [{"node": "1", "folder_name": 3}],
        [{"node": "1", "folder_name": "a"}] * 17,
    ],
)
def test_malformed_save_entries_get_400(models, save):
    status, result = call("POST", "/pipequant/estimate", json={"model": "tiny-flux", "spec": None, "save": save})
    assert status == 400 and result["problems"][0]["field"] in ("save", "node", "folder_name")


def test_a_shared_backend_feeding_two_maps_gets_an_estimate(models):
    status, result = call(
        "POST", "/pipequant/estimate", json={"model": "tiny-flux", "spec": _flux_maps("torchao", "int8_weight_only")}
    )
    assert status == 200 and result["ok"]
    quantized = {c["component"] for c in result["estimate"]["components"] if c["action"] == "quantize"}
    assert quantized == {"transformer", "text_encoder_2"}


def test_backends_route_carries_the_editors_facts():
    from pipequant.nodes import NODE_CLASS_MAPPINGS
    from pipequant.resolver.links.inputs import NO_FILE

    status, body = call("GET", "/pipequant/backends")
    editor = body["editor"]
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        assert editor["inputs"][node_id] == [*declared["required"], *declared.get("optional", {})]
    assert editor["inputs"]["PipeQuantBackend"][:2] == ["backend", "quant_type"]
    assert editor["no_file"] == NO_FILE and editor["actions"]["keep"] == "keep"
    assert editor["defaults"]["PipeQuantBackend"]["backend"] == catalogue.default_choice(editor["device"])[0]


def test_a_cpu_only_server_defaults_to_a_backend_that_runs_there():
    name, quant = catalogue.default_choice("cpu")
    backend = catalogue.get_backend(name)
    assert catalogue.runs_on_cpu(backend) and not backend.quant_type(quant).needs_cuda
    # bitsandbytes (first in the catalogue) needs a GPU for diffusers models: not the CPU default
    assert not catalogue.runs_on_cpu(catalogue.get_backend(catalogue.backend_names()[0]))
    assert catalogue.default_choice("cuda") == (
        catalogue.backend_names()[0],
        catalogue.get_backend(catalogue.backend_names()[0]).quant_types[0].name,
    )
