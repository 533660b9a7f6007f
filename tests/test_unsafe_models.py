"""Unsafe models: only pipeline folders under the configured model roots load; only safetensors
load unless the user opts in; only classes built into diffusers/transformers are ever named.

Every refusal is checked in the three places a name can come from: the Load node (VALIDATE_INPUTS
and its run), the headless runner (a workflow file), and the editor's HTTP routes. Files that
would run code if they were ever unpickled or imported leave a marker file: no marker may appear.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import routes_client
from safetensors.torch import load_file

from pipequant.nodes.backend import PipeQuantBackend
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.resolver import BackendSpec, ComponentCache, ComponentMap, LoadError, ValidationError
from pipequant.resolver.files.roots import list_files, list_pipelines, resolve_model
from pipequant.resolver.keep import load
from pipequant.runner import cli
from pipequant.runner.execute import execute

LOAD = "Load Quantized Pipeline"


class _Evil:
    """Unpickling this creates `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"text_model.embeddings.position_ids": _Evil(marker)}, protocol=2))


def _evil_module(path: Path, marker: Path, class_name: str) -> None:
    path.write_text(f"open({str(marker)!r}, 'w').close()\n\nclass {class_name}:\n    pass\n")


def _set_index(folder: Path, **entries) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index.update(entries)
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_flux, flux_gguf):
    """A model root and a GGUF root with every kind of unsafe entry, and a folder outside both."""
    base = tmp_path_factory.mktemp("unsafe")
    root, gguf, outside, markers = base / "models", base / "gguf", base / "outside", base / "markers"
    for d in (root, gguf, outside, markers):
        d.mkdir()
    shutil.copytree(tiny_flux, root / "tiny-flux")
    shutil.copytree(tiny_flux, outside / "tiny-flux-elsewhere")
    (root / "alias").symlink_to(root / "tiny-flux", target_is_directory=True)  # stays inside: fine
    (root / "link-out").symlink_to(outside / "tiny-flux-elsewhere", target_is_directory=True)
    component_link = shutil.copytree(tiny_flux, root / "component-link")
    shutil.rmtree(component_link / "transformer")
    (component_link / "transformer").symlink_to(
        outside / "tiny-flux-elsewhere" / "transformer", target_is_directory=True
    )
    file_link = shutil.copytree(tiny_flux, root / "file-link")
    (file_link / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (file_link / "vae" / "diffusion_pytorch_model.safetensors").symlink_to(
        outside / "tiny-flux-elsewhere" / "vae" / "diffusion_pytorch_model.safetensors"
    )

    # Pickle: real weights only as .bin (the opt-in loads them), a malicious .bin, and a malicious
    # .bin beside the safetensors file (never read: safetensors is preferred).
    pickled = shutil.copytree(tiny_flux, root / "pickle-only")
    weights = pickled / "text_encoder" / "model.safetensors"
    torch.save(load_file(weights), pickled / "text_encoder" / "pytorch_model.bin")
    weights.unlink()
    evil = shutil.copytree(tiny_flux, root / "pickle-evil")
    (evil / "text_encoder" / "model.safetensors").unlink()
    _evil_pickle(evil / "text_encoder" / "pytorch_model.bin", markers / "pickle-evil")
    beside = shutil.copytree(tiny_flux, root / "pickle-beside")
    _evil_pickle(beside / "text_encoder" / "pytorch_model.bin", markers / "pickle-beside")
    pt_only = shutil.copytree(tiny_flux, root / "pt-only")
    (pt_only / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    _evil_pickle(pt_only / "vae" / "weights.pt", markers / "pt-only")

    # Classes outside diffusers/transformers: custom component code, a custom pipeline file,
    # an unknown pipeline class, and a transformers function posing as a class.
    custom = shutil.copytree(tiny_flux, root / "custom-component")
    _evil_module(custom / "evil_model.py", markers / "custom-component", "EvilModel")
    _set_index(custom, transformer=["evil_model", "EvilModel"])
    custom_pipe = shutil.copytree(tiny_flux, root / "custom-pipeline")
    _evil_module(custom_pipe / "pipeline.py", markers / "custom-pipeline", "EvilPipeline")
    _set_index(custom_pipe, _class_name=["pipeline", "EvilPipeline"])
    unknown = shutil.copytree(tiny_flux, root / "unknown-pipeline")
    _set_index(unknown, _class_name="EvilPipeline")
    not_pipe = shutil.copytree(tiny_flux, root / "not-a-pipeline-class")
    _set_index(not_pipe, _class_name="AutoencoderKL")
    func = shutil.copytree(tiny_flux, root / "function-as-class")
    _set_index(func, tokenizer=["transformers", "pipeline"])

    shutil.copy(flux_gguf, gguf / flux_gguf.name)
    shutil.copy(flux_gguf, outside / "secret.gguf")
    (gguf / "linked.gguf").symlink_to(outside / "secret.gguf")
    return {"root": root, "gguf": gguf, "outside": outside, "markers": markers}


@pytest.fixture
def roots(world, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(world["root"]))
    monkeypatch.setenv("PIPEQUANT_GGUF", str(world["gguf"]))
    yield world
    assert not list(world["markers"].iterdir()), "a pickle or custom module was executed"


# -- the three entry points ---------------------------------------------------------------------
def via_node_validate(name: str, **kw) -> tuple[list[str], str]:
    result = PipeQuantLoadPipeline.check(name, "bfloat16", "cpu", "none", **kw)
    assert result is not True, f"{name} passed VALIDATE_INPUTS"
    return [p.code for p in result.problems], result


def via_node_load(name: str, spec=None, **kw) -> tuple[list[str], str]:
    with torch.inference_mode(), pytest.raises(ValidationError) as info:
        PipeQuantLoadPipeline().load(name, "bfloat16", "cpu", "none", spec, **kw)
    return info.value.codes, str(info.value)


def _workflow(tmp: Path, name: str, allow_pickle=None) -> Path:
    load_inputs = {"model": name, "dtype": "bfloat16", "device": "cpu", "offload": "none"}
    if allow_pickle is not None:
        load_inputs["allow_pickle"] = allow_pickle
    prompt = {
        "1": {"class_type": "PipeQuantLoadPipeline", "inputs": load_inputs},
        "2": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["1", 0]}},
    }
    path = tmp / "workflow.json"
    path.write_text(json.dumps(prompt))
    return path


def via_runner(name: str, tmp: Path, *, validate_only: bool = True, **kw) -> tuple[list[str], str]:
    with torch.inference_mode(), pytest.raises(ValidationError) as info:
        execute(cli.load_prompt(_workflow(tmp, name, **kw)), validate_only=validate_only)
    return info.value.codes, str(info.value)


async def _http(method: str, path: str, *, query=None, body=None):
    async with routes_client() as client:
        if method == "GET":
            response = await client.get(path, params=query)
        else:
            response = await client.post(path, json=body)
        return response.status, await response.json()


def via_route(kind: str, name: str) -> tuple[list[str], str]:
    if kind == "components":
        status, data = asyncio.run(_http("GET", "/pipequant/components", query={"model": name}))
        assert status == 400, data
    else:
        body = {
            "model": name,
            "device": "cpu",
            "spec": {
                "kind": "global",
                "node": 1,
                "backend": "torchao",
                "quant_type": "int8_weight_only",
                "options": "{}",
            },
        }
        status, data = asyncio.run(_http("POST", f"/pipequant/{kind}", body=body))
        assert status == 200 and data["ok"] is False, data
        if kind == "estimate":
            assert data["estimate"] is None
    problems = [p for p in data["problems"] if p.get("severity", "error") == "error"]
    return [p["code"] for p in problems], "\n".join(
        f"{p['field']}: {p['message']} — {p['suggestion']}" for p in problems
    )


LAYERS = [
    "node-validate",
    "node-load",
    "runner-validate",
    "runner-run",
    "route-components",
    "route-validate",
    "route-estimate",
]


def refuse(layer: str, name: str, tmp: Path) -> tuple[list[str], str]:
    if layer == "node-validate":
        return via_node_validate(name)
    if layer == "node-load":
        return via_node_load(name)
    if layer == "runner-validate":
        return via_runner(name, tmp)
    if layer == "runner-run":
        return via_runner(name, tmp, validate_only=False)
    return via_route(layer.split("-", 1)[1], name)


# -- only folders under the roots ---------------------------------------------------------------------
def _outside_names(world) -> dict[str, str]:
    return {
        "dotdot": "../outside/tiny-flux-elsewhere",
        "dotdot-inside": "tiny-flux/../tiny-flux",
        "absolute": str(world["outside"] / "tiny-flux-elsewhere"),
        "absolute-inside-root": str(world["root"] / "tiny-flux"),
        "backslash": "..\\outside\\tiny-flux-elsewhere",
        "symlink-out": "link-out",
        "component-symlink-out": "component-link",
        "file-symlink-out": "file-link",
    }


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize(
    "which",
    [
        "dotdot",
        "dotdot-inside",
        "absolute",
        "absolute-inside-root",
        "backslash",
        "symlink-out",
        "component-symlink-out",
        "file-symlink-out",
    ],
)
def test_paths_leaving_the_roots_are_refused(roots, tmp_path, layer, which):
    name = _outside_names(roots)[which]
    codes, text = refuse(layer, name, tmp_path)
    assert codes == ["model_outside_roots"], text
    assert "model" in text
    assert "pick a pipeline from the model list" in text or "instead of linking" in text, text
    if layer.startswith("node"):
        assert f"{LOAD} › model" in text


def test_model_list_shows_only_what_would_load(roots):
    names = list_pipelines([roots["root"]])
    assert "tiny-flux" in names and "alias" in names
    assert "link-out" not in names
    assert resolve_model("alias", [roots["root"]]) == roots["root"] / "alias"  # a link inside the root is fine
    choices = PipeQuantLoadPipeline.INPUT_TYPES()["required"]["model"][0]
    assert "link-out" not in choices and "tiny-flux" in choices


def test_a_link_inside_the_root_loads(roots):
    with torch.inference_mode():
        (result, _report) = PipeQuantLoadPipeline().load("alias", "bfloat16", "cpu", "none")
    assert result.pipeline.transformer is not None


@pytest.mark.parametrize("gguf_file", ["linked.gguf", "../outside/secret.gguf", "ABSOLUTE"])
def test_gguf_files_leaving_the_roots_are_refused(roots, gguf_file):
    if gguf_file == "ABSOLUTE":
        gguf_file = str(roots["outside"] / "secret.gguf")
    assert "linked.gguf" not in list_files([roots["gguf"]])
    assert gguf_file not in PipeQuantBackend.INPUT_TYPES()["optional"]["gguf_file"][0]
    result = PipeQuantBackend.check("gguf", "from_file", "auto", "", "{}", gguf_file)
    assert [p.code for p in result.problems] == ["gguf_file_missing"]
    spec = ComponentMap.make({"transformer": BackendSpec.make("gguf", "from_file", gguf_file=gguf_file)})
    codes, text = via_node_load("tiny-flux", spec)
    assert codes == ["gguf_file_missing"] and "(feeding the map for transformer) › gguf_file" in text


# -- safetensors only by default ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer", ["node-validate", "node-load", "runner-validate", "runner-run", "route-validate", "route-estimate"]
)
@pytest.mark.parametrize("name", ["pickle-only", "pickle-evil", "pt-only"])
def test_pickle_only_components_are_refused_by_default(roots, tmp_path, layer, name):
    codes, text = refuse(layer, name, tmp_path)
    assert codes == ["pickle_only"], text
    assert "allow_pickle" in text and "pickle" in text
    component = "vae" if name == "pt-only" else "text_encoder"
    assert f'"{component}" has only pickle weights' in text


def test_allow_pickle_is_an_explicit_opt_in(roots, tmp_path):
    """The Load node's allow_pickle (off by default) loads .bin weights; only a real true opts in."""
    optional = PipeQuantLoadPipeline.INPUT_TYPES()["optional"]["allow_pickle"]
    assert optional[0] == "BOOLEAN" and optional[1]["default"] is False
    assert "code" in optional[1]["tooltip"] and "trust" in optional[1]["tooltip"]
    assert via_node_validate("pickle-only", allow_pickle="true")[0] == ["pickle_only"]  # text is not true
    assert via_node_load("pickle-only", allow_pickle="yes")[0] == ["pickle_only"]
    assert PipeQuantLoadPipeline.check("pickle-only", "bfloat16", "cpu", "none", allow_pickle=True) is True
    with torch.inference_mode():
        result, _report = PipeQuantLoadPipeline().load("pickle-only", "bfloat16", "cpu", "none", allow_pickle=True)
    expected = torch.load(roots["root"] / "pickle-only" / "text_encoder" / "pytorch_model.bin", weights_only=True)
    state = result.pipeline.text_encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    # The runner passes the workflow's allow_pickle through too.
    with torch.inference_mode():
        assert execute(cli.load_prompt(_workflow(tmp_path, "pickle-only", allow_pickle=True)), validate_only=True) == {}


def test_opting_in_still_never_runs_pickled_code(roots):
    """With allow_pickle, the libraries load .bin with torch.load(weights_only=True): a malicious
    pickle fails to load (naming the component and file) instead of running."""
    with torch.inference_mode(), pytest.raises(LoadError) as info:
        load(roots["root"] / "pickle-evil", None, device="cpu", allow_pickle=True, cache=ComponentCache())
    assert info.value.component == "text_encoder"
    assert any(f.endswith("pytorch_model.bin") for f in info.value.files) or "pytorch_model.bin" in str(info.value)


def test_pickle_beside_safetensors_is_never_read(roots):
    with torch.inference_mode():
        result, _report = PipeQuantLoadPipeline().load("pickle-beside", "bfloat16", "cpu", "none")
    assert result.pipeline.text_encoder is not None


# -- classes from diffusers/transformers only ----------------------------------------------------------------
@pytest.mark.parametrize(
    "layer", ["node-validate", "node-load", "runner-validate", "route-components", "route-validate"]
)
@pytest.mark.parametrize(
    "name", ["custom-component", "custom-pipeline", "unknown-pipeline", "not-a-pipeline-class", "function-as-class"]
)
def test_classes_outside_diffusers_and_transformers_are_refused(roots, tmp_path, layer, name):
    codes, text = refuse(layer, name, tmp_path)
    assert codes == ["unsafe_class"], text
    assert "custom" in text and ("never run" in text or "never custom or remote code" in text), text
