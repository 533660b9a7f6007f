"""Before Run, the nodes fed by a Load node check its model (no weights read): Pipeline to ComfyUI and
Encode Prompt with Pipeline refuse a family the bridge does not map (directly or through Apply
LoRA) in the editor's live check, when ComfyUI queues the prompt and in the headless runner; the
Sampler's frame rule is checked live with the valid neighbours named. ComfyUI's own pieces are
faked here (tests/test_browser.py drives the real ones)."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from pipequant.nodes import NODE_CLASS_MAPPINGS, prompt_checks, routes
from pipequant.resolver.files import inspect_model
from pipequant.resolver.run.encode import FAMILY_OF_DENOISER, denoiser_family, family_of, model_family
from pipequant.runner.execute import _run, execution_order
from pipequant.testing.families import ensure_family

UNMAPPED = "Sana"  # ComfyUI has no model config for it: the bridge cannot map it


@pytest.fixture(scope="module")
def unmapped(models_root):
    return ensure_family(UNMAPPED, models_root)


@pytest.fixture(scope="module")
def video(models_root):
    return ensure_family("LTX-Video", models_root)


@pytest.fixture
def roots(monkeypatch, models_root, tiny_flux, unmapped, video):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.delenv("PIPEQUANT_GGUF", raising=False)
    return [models_root]


def test_the_family_comes_from_the_denoiser_class_and_config():
    assert denoiser_family("FluxTransformer2DModel") == "flux"
    assert denoiser_family("UNet2DConditionModel", {"addition_embed_type": None}) == "sd1"
    assert denoiser_family("UNet2DConditionModel", {"addition_embed_type": "text_time"}) == "sdxl"
    assert denoiser_family("SanaTransformer2DModel", {}) is None and denoiser_family(None) is None
    # family_of (a loaded pipeline) asks the same rule
    unet = type("UNet2DConditionModel", (), {"config": {"addition_embed_type": "text_time"}})()
    assert family_of(SimpleNamespace(transformer=None, unet=unet)) == "sdxl"


def test_model_family_reads_the_folder(tiny_flux, unmapped, sdxl):
    assert model_family(inspect_model(tiny_flux)) == ("flux", "FluxTransformer2DModel")
    assert model_family(inspect_model(sdxl)) == ("sdxl", "UNet2DConditionModel")
    family, denoiser = model_family(inspect_model(unmapped))
    assert family is None and denoiser == "SanaTransformer2DModel"
    assert denoiser not in FAMILY_OF_DENOISER


def api_prompt(model: str, through_lora: bool = True) -> dict:
    prompt = {
        "1": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {"model": model, "dtype": "bfloat16", "device": "cpu", "offload": "none"},
        },
        "2": {"class_type": "PipeQuantLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "x", "strength": 1.0}},
        "3": {"class_type": "PipeQuantToComfy", "inputs": {"pipeline": ["2" if through_lora else "1", 0]}},
        "4": {"class_type": "PipeQuantEncodePrompt", "inputs": {"pipeline": ["1", 0], "text": "a cat"}},
    }
    return prompt


def test_the_queued_prompt_refuses_an_unmapped_family_once_per_node(roots, unmapped, tiny_flux):
    found = prompt_checks.refusals(api_prompt(unmapped.name), NODE_CLASS_MAPPINGS, roots)
    assert sorted(found) == ["3", "4"]  # through Apply LoRA too
    for node_id, title in (("3", "Pipeline to ComfyUI"), ("4", "Encode Prompt with Pipeline")):
        text = str(found[node_id])
        assert text.startswith(f"{title} › pipeline: SanaPipeline") and text.count("\n") == 0, text
        assert text.count("FLUX.1") == 1 and "SDXL" in text and "Stable Diffusion 3" in text, text
    assert prompt_checks.refusals(api_prompt(tiny_flux.name), NODE_CLASS_MAPPINGS, roots) == {}
    # A model that does not resolve is the Load node's own problem.
    assert prompt_checks.refusals(api_prompt("no-such-model"), NODE_CLASS_MAPPINGS, roots) == {}


def test_validate_inputs_answers_through_comfyuis_executing_context(roots, unmapped, monkeypatch):
    """ComfyUI validates a node with its executing context set (comfy_execution.utils): the node's
    VALIDATE_INPUTS(pipeline=None) finds the verdict the on-prompt hook kept for that node."""
    data = {"prompt": api_prompt(unmapped.name), "client_id": "x"}
    prompt_checks.on_prompt(data, NODE_CLASS_MAPPINGS, roots)
    assert data["prompt_id"]  # the id ComfyUI then uses (it keeps one the client sent)
    current = {}
    utils = ModuleType("comfy_execution.utils")
    utils.get_executing_context = lambda: current.get("context")
    monkeypatch.setitem(sys.modules, "comfy_execution", ModuleType("comfy_execution"))
    monkeypatch.setitem(sys.modules, "comfy_execution.utils", utils)
    to_comfy, encode = NODE_CLASS_MAPPINGS["PipeQuantToComfy"], NODE_CLASS_MAPPINGS["PipeQuantEncodePrompt"]
    current["context"] = SimpleNamespace(prompt_id=data["prompt_id"], node_id="3")
    assert "has no ComfyUI mapping" in str(to_comfy.VALIDATE_INPUTS(pipeline=None))
    current["context"] = SimpleNamespace(prompt_id=data["prompt_id"], node_id="4")
    assert "Encode Prompt with Pipeline › pipeline" in str(encode.VALIDATE_INPUTS(pipeline=None))
    current["context"] = SimpleNamespace(prompt_id="another prompt", node_id="3")
    assert to_comfy.VALIDATE_INPUTS(pipeline=None) is True
    # One argument: ComfyUI files a failure once per argument VALIDATE_INPUTS takes.
    import inspect

    for cls in (to_comfy, encode):
        assert list(inspect.signature(cls.VALIDATE_INPUTS).parameters) == ["pipeline"]


def test_the_runner_refuses_an_unmapped_family_through_apply_lora(roots, unmapped):
    from pipequant.resolver.problems import ValidationError

    prompt = api_prompt(unmapped.name)
    del prompt["4"]
    with pytest.raises(ValidationError) as info:
        _run(prompt, execution_order(prompt, ["3"]), validate_only=True)
    (problem,) = info.value.problems
    assert problem.code == "bridge_family" and problem.field == "node 3 (Pipeline to ComfyUI).pipeline"


def live(body: dict) -> dict:
    return routes.check(body)


def test_the_live_check_tags_the_consumers_it_refuses(roots, unmapped, video):
    body = live(
        {
            "model": unmapped.name,
            "consumers": [{"node": "7", "type": "PipeQuantEncodePrompt"}, {"node": "8", "type": "PipeQuantToComfy"}],
        }
    )
    tagged = {(p["node"], p["input"], p["code"]) for p in body["problems"]}
    assert tagged == {("7", "pipeline", "bridge_family"), ("8", "pipeline", "bridge_family")}, body["problems"]
    assert body["pipeline"] == {"class": "SanaPipeline", "video_inputs": []}  # an image pipeline: no num_frames / fps
    # A video pipeline's frame rule, on the Sampler's num_frames, with the valid neighbours.
    sampler = {"node": "9", "type": "PipeQuantSampler", "inputs": {"num_frames": 11, "width": 64, "height": 64}}
    body = live({"model": video.name, "consumers": [sampler]})
    (problem,) = [p for p in body["problems"] if p["node"] == "9"]
    factor = int(problem["message"].split("renders ")[1].split("k+1")[0])
    below = (11 - 1) // factor * factor + 1
    assert problem["input"] == "num_frames" and f"use {below} or {below + factor}" in problem["suggestion"]
    assert body["pipeline"]["video_inputs"][0] == "num_frames"
    sampler["inputs"]["num_frames"] = below
    assert not [p for p in live({"model": video.name, "consumers": [sampler]})["problems"] if p["node"] == "9"]


def test_the_quality_checks_own_inputs_are_checked_live(roots, tiny_sd3):
    """Plan Quality Check loads its own model: its size and the components it measures are checked
    against that folder before Run, as the Load node's live check checks the plan."""
    check = {"node": "5", "type": "PipeQuantQualityCheck", "inputs": {"width": 63, "height": 64}}
    check["inputs"]["components"] = "transformer, text_encodr"  # tiny SD3: multiples of 2, at most 64
    body = live({"model": tiny_sd3.name, "consumers": [check]})
    found = {(p["input"], p["code"]) for p in body["problems"] if p["node"] == "5"}
    assert found == {("width", "image_size_invalid"), ("components", "component_not_measurable")}, body["problems"]
    (typo,) = [p for p in body["problems"] if p["code"] == "component_not_measurable"]
    assert "text_encodr" in typo["message"] and "text_encoder" in typo["suggestion"]
    check["inputs"] = {"width": 64, "height": 64, "components": "vae"}  # compared through the images
    assert [p["code"] for p in live({"model": tiny_sd3.name, "consumers": [check]})["problems"]] == [
        "component_not_measurable"
    ]
    check["inputs"]["components"] = ""
    assert not live({"model": tiny_sd3.name, "consumers": [check]})["problems"]
