"""One `prepare()`: the Load node, the editor's routes, the runner's `validate` and the planner give the
same verdict (and the node and the route the same estimate) for the same Load inputs — a variant the
model lacks and the fp16 variant included."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipequant.nodes import routes
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.nodes.messages import NodeInputError
from pipequant.resolver import ValidationError
from pipequant.runner.execute import execute

QUANT = {"backend": "torchao", "quant_type": "int8_weight_only", "compute_dtype": "auto", "components": "transformer"}


@pytest.fixture
def models(tmp_path, tiny_flux, monkeypatch):
    """A models root with tiny-flux whose transformer also has an fp16 variant (half the bytes read)."""
    folder = tmp_path / "models" / "flux-variants"
    shutil.copytree(tiny_flux, folder)
    plain = next((folder / "transformer").glob("diffusion_pytorch_model*.safetensors"))
    half = {k: v.to(torch.float16) for k, v in load_file(plain).items()}
    save_file(half, folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv("PIPEQUANT_MODELS", str(folder.parent))
    monkeypatch.delenv("PIPEQUANT_GGUF", raising=False)
    return folder.parent


def _node(variant: str):
    """The Load node: its own inputs together (`check`), then its plan with the Backend's spec (and the
    estimate its load reuses)."""
    from pipequant.nodes.backend import PipeQuantBackend

    assert PipeQuantLoadPipeline.VALIDATE_INPUTS("flux-variants") is True  # ComfyUI's check: the model alone
    checked = PipeQuantLoadPipeline.check("flux-variants", "float32", "cpu", "none", variant=variant)
    if checked is not True:
        return {"ok": False, "text": checked}, None
    (spec,) = PipeQuantBackend().build(**QUANT, options="{}")
    try:
        prepared = PipeQuantLoadPipeline.prepared("flux-variants", "float32", "cpu", "none", spec, variant=variant)
    except NodeInputError as exc:
        return {"ok": False, "text": str(exc)}, None
    return {"ok": True}, prepared.estimate()["total"]


def _route(variant: str):
    spec = {"node": "1", "kind": "global", **QUANT, "options": "{}"}
    body = routes.estimate(
        {"model": "flux-variants", "spec": spec, "dtype": "float32", "device": "cpu", "variant": variant}
    )
    codes = [p["code"] for p in body["problems"] if p["severity"] == "error"]
    return {"ok": body["ok"], "codes": codes}, (body["estimate"] or {}).get("total")


def _runner(variant: str):
    prompt = {
        "1": {"class_type": "PipeQuantBackend", "inputs": {**QUANT, "options": "{}"}},
        "2": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {
                "model": "flux-variants",
                "dtype": "float32",
                "device": "cpu",
                "offload": "none",
                "quantization": ["1", 0],
                "variant": variant,
            },
        },
        "3": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["2", 0]}},
    }
    try:
        execute(prompt, validate_only=True)
    except (ValidationError, RuntimeError) as exc:
        return {"ok": False, "text": str(exc)}
    return {"ok": True}


def _planner(variant: str):
    body = routes.auto_plan({"model": "flux-variants", "budget_gb": 24, "goal": "quality", "variant": variant})
    return {"ok": body["ok"], "codes": [p["code"] for p in body.get("problems", [])]}


@pytest.mark.parametrize("variant", ["default", "fp16", "bf16"])
def test_every_surface_gives_the_same_verdict_and_estimate(models, variant):
    node, node_total = _node(variant)
    route, route_total = _route(variant)
    runner, planner = _runner(variant), _planner(variant)
    verdicts = {"node": node["ok"], "route": route["ok"], "runner": runner["ok"], "planner": planner["ok"]}
    if variant == "bf16":  # the model has no bf16 files: every surface refuses it, naming the variant
        assert verdicts == dict.fromkeys(verdicts, False)
        assert "variant_missing" in route["codes"] and "variant_missing" in planner["codes"]
        assert "variant" in node["text"] and "variant" in runner["text"]
    else:
        assert verdicts == dict.fromkeys(verdicts, True), (node, route, runner, planner)
        assert node_total == route_total


def test_the_estimate_follows_the_variant_on_every_surface(models):
    """The fp16 files are read for the transformer (half the bytes): node and route both count them."""
    (_, plain_node), (_, plain_route) = _node("default"), _route("default")
    (_, fp16_node), (_, fp16_route) = _node("fp16"), _route("fp16")
    assert plain_node == plain_route and fp16_node == fp16_route
    assert fp16_route["bytes_read"] < plain_route["bytes_read"]
