"""The pack inside a real ComfyUI server (CPU): every example workflow posted to /prompt in API
format, bad inputs answered with 400 + node_errors on the right node, errors raised while running
reported in /history, and the server still serving afterwards.

Run:  COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/test_comfyui_integration.py -v
(ComfyUI's python: $COMFYUI_PYTHON, else $COMFYUI_DIR/venv/bin/python.) Skipped without COMFYUI_DIR.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from pathlib import Path
from urllib.parse import quote

import pytest
from comfy_server import PACK_DIR, PACK_NAME, comfy_server, video_size  # noqa: F401 (the fixture)
from PIL import Image

from pipequant.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from pipequant.runner.builtin import BUILTIN_NODES
from pipequant.runner.workflow import read_workflow, to_api

pytestmark = pytest.mark.comfyui

EXAMPLES = PACK_DIR / "example_workflows"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
# Our nodes plus ComfyUI's SaveImage/PreviewImage (the runner's stand-ins keep their widget order).
NODE_CLASSES = {**NODE_CLASS_MAPPINGS, **BUILTIN_NODES}
SIZE = 32  # pixels; the tiny pipelines' VAEs do not downsample much
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VIDEO_FRAMES = 5  # 4k+1: two latent frames of the tiny Wan


# -- building prompts ----------------------------------------------------------------------------
def core_classes(server) -> dict:
    """Stand-ins for ComfyUI's core nodes (KSampler, VAEDecode, ...) with the server's own input
    declarations, so that to_api reads their widget values in the editor's order."""
    status, info = server.get("/object_info")
    assert status == 200
    return {
        name: type(name, (), {"INPUT_TYPES": staticmethod(lambda e=entry: e["input"])}) for name, entry in info.items()
    }


def example(name: str, server=None) -> tuple[dict, dict]:
    """(UI workflow, API prompt) of an example, shrunk to run in seconds on the server's CPU."""
    ui = read_workflow(EXAMPLES / f"{name}.json")
    prompt = to_api(copy.deepcopy(ui), {**(core_classes(server) if server else {}), **NODE_CLASSES})
    for node in nodes(prompt, "PipeQuantSampler"):
        node["inputs"].update(steps=2, width=SIZE, height=SIZE, max_sequence_length=32)
    for node in nodes(prompt, "KSampler"):  # templates into core's sampler (Pipeline to ComfyUI)
        node["inputs"]["steps"] = 2
    for kind in ("EmptySD3LatentImage", "EmptyLatentImage"):
        for node in nodes(prompt, kind):  # latent = size / 8; the tiny VAEs keep the latent's size
            node["inputs"].update(width=SIZE * 8, height=SIZE * 8)
    for node in nodes(prompt, "EmptyHunyuanLatentVideo"):  # Wan's VAE does downsample (8x, 4x in time)
        node["inputs"].update(width=SIZE, height=SIZE, length=VIDEO_FRAMES)
    for node in nodes(prompt, "PipeQuantEncodePrompt"):
        node["inputs"]["max_sequence_length"] = 32
    for node in nodes(prompt, "PipeQuantLoadPipeline"):
        node["inputs"]["device"] = "cpu"  # what a --cpu server has
    return ui, prompt


def nodes(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n["class_type"] == class_type]


def node_id(prompt: dict, class_type: str) -> str:
    ids = [i for i, n in prompt.items() if n["class_type"] == class_type]
    assert len(ids) == 1, f"expected one {class_type}, got {ids}"
    return ids[0]


def uses_bitsandbytes(prompt: dict) -> bool:
    return any(n["inputs"]["backend"].startswith("bitsandbytes") for n in nodes(prompt, "PipeQuantBackend"))


def slug(name: str) -> str:
    """A template's name as a folder or file prefix (template names have spaces and parentheses)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def cpu_variant(name: str, prompt: dict) -> dict:
    """What runs in a CPU server: diffusers' bitsandbytes quantizer needs a GPU, so bnb backends
    become torchao int8_weight_only; the save example quantizes the transformer with quanto int8
    (savable for diffusers models) and saves under a fresh name."""
    for node in nodes(prompt, "PipeQuantBackend"):
        if node["inputs"]["backend"].startswith("bitsandbytes"):
            node["inputs"].update(backend="torchao", quant_type="int8_weight_only", compute_dtype="auto", options="{}")
    if nodes(prompt, "PipeQuantSavePipeline"):
        for node in nodes(prompt, "PipeQuantBackend"):
            node["inputs"].update(
                backend="quanto", quant_type="int8", compute_dtype="auto", options="{}", components="transformer"
            )
        for node in nodes(prompt, "PipeQuantSavePipeline"):
            node["inputs"]["folder_name"] = f"{name}-quanto-int8"
    for node in nodes(prompt, "SaveImage") + nodes(prompt, "SaveAnimatedWEBP"):
        node["inputs"]["filename_prefix"] = f"pq-it-{name}"
    return prompt


def backends_of(prompt: dict) -> set[str]:
    return {f"{n['inputs']['backend']}:{n['inputs']['quant_type']}" for n in nodes(prompt, "PipeQuantBackend")}


# -- reading answers -----------------------------------------------------------------------------
def execution_error(entry: dict) -> dict | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def assert_success(entry: dict, server) -> None:
    status = entry.get("status", {})
    error = execution_error(entry)
    assert status.get("status_str") == "success" and status.get("completed"), (
        f"prompt failed: {error.get('exception_type') if error else ''}: "
        f"{error.get('exception_message') if error else status}\n{server.log_tail()}"
    )


def error_texts(node_error: dict) -> str:
    return "\n".join(f"{e.get('message', '')} | {e.get('details', '')}" for e in node_error["errors"])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_server_serves(server) -> None:
    server.check_alive()
    status, stats = server.get("/system_stats")
    assert status == 200 and "system" in stats
    status, queue = server.get("/queue")
    assert status == 200 and queue["queue_running"] == [] and queue["queue_pending"] == []


# -- what ComfyUI shows the user -----------------------------------------------------------------
def test_object_info_lists_the_nodes_with_tooltips(comfy_server):
    status, info = comfy_server.get("/object_info")
    assert status == 200
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"ComfyUI did not load {missing}\n{comfy_server.log_tail()}"
    for name in NODE_CLASS_MAPPINGS:
        node = info[name]
        assert node["python_module"] == f"custom_nodes.{PACK_NAME}"
        assert node["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[name]
        assert node["category"] == "PipeQuant" and node["description"]
        for section in ("required", "optional"):
            for input_name, entry in node["input"].get(section, {}).items():
                options = entry[1] if len(entry) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        if node["output"]:
            assert node.get("output_tooltips") and all(node["output_tooltips"]), f"{name} outputs lack tooltips"
    # The model lists come from the extra model paths.
    assert {"FLUX.1-dev", "stable-diffusion-3.5-medium"} <= set(
        info["PipeQuantLoadPipeline"]["input"]["required"]["model"][0]
    )
    assert "flux1-dev-Q8_0.gguf" in info["PipeQuantBackend"]["input"]["optional"]["gguf_file"][0]


def test_example_workflows_are_templates(comfy_server):
    status, templates = comfy_server.get("/api/workflow_templates")
    assert status == 200
    assert sorted(templates.get(PACK_NAME, [])) == EXAMPLE_NAMES
    # The template browser's title is the file name: readable names, with spaces and parentheses,
    # served as the browser asks for them (percent-encoded).
    assert all("_" not in name for name in EXAMPLE_NAMES), EXAMPLE_NAMES
    for name in EXAMPLE_NAMES:
        status, body = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{quote(name)}.json")
        assert status == 200, name
        assert body == json.loads((EXAMPLES / f"{name}.json").read_text())


# -- every example runs ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_workflow_runs(comfy_server, name):
    ui, prompt = example(name, comfy_server)
    prompt = cpu_variant(slug(name), prompt)
    entry = comfy_server.run(prompt, ui, timeout=150)
    assert_success(entry, comfy_server)
    outputs = entry["outputs"]

    for save_id in [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]:
        images = outputs[save_id]["images"]
        assert len(images) == 1 and images[0]["type"] == "output"
        assert images[0]["filename"].startswith(f"pq-it-{slug(name)}")
        path = comfy_server.output_dir / images[0]["subfolder"] / images[0]["filename"]
        assert path.is_file(), f"{path} was not written"
        assert png_size(path) == (SIZE, SIZE)
        status, raw = comfy_server.get(
            f"/view?filename={images[0]['filename']}&type=output&subfolder={images[0]['subfolder']}"
        )
        assert status == 200 and raw[:8] == PNG_MAGIC

    for save_id in [i for i, n in prompt.items() if n["class_type"] == "SaveAnimatedWEBP"]:  # a video's frames
        (saved,) = outputs[save_id]["images"]
        path = comfy_server.output_dir / saved["subfolder"] / saved["filename"]
        frames = next(n for n in nodes(prompt, "PipeQuantSampler"))["inputs"]["num_frames"]
        with Image.open(path) as video:
            assert (video.format, video.n_frames, video.size) == ("WEBP", frames, (SIZE, SIZE)), path

    for save_id in [i for i, n in prompt.items() if n["class_type"] == "SaveVideo"]:  # core's video save
        (saved,) = outputs[save_id]["images"]
        path = comfy_server.output_dir / saved["subfolder"] / saved["filename"]
        assert video_size(path) == [VIDEO_FRAMES, SIZE, SIZE], path

    report_id = node_id(prompt, "PipeQuantMemoryReport")
    text = "\n".join(outputs[report_id]["text"])
    assert "TOTAL" in text and ("transformer" in text or "unet" in text)  # SDXL: a UNet
    for plan in backends_of(prompt):  # e.g. "torchao:int8_weight_only", "gguf:from_file"
        assert plan in text, f"{plan} missing from the memory report:\n{text}"

    for save_id in [i for i, n in prompt.items() if n["class_type"] == "PipeQuantSavePipeline"]:
        folder = comfy_server.models_root / prompt[save_id]["inputs"]["folder_name"]
        assert outputs[save_id]["text"][0].startswith("saved ") and outputs[save_id]["text"][0].endswith(
            f" to {folder}"
        )
        assert (folder / "model_index.json").is_file()
        assert list((folder / "transformer").glob("*.safetensors")), "transformer weights were not saved"
        config = json.loads((folder / "transformer" / "config.json").read_text())
        assert config.get("quantization_config", {}).get("quant_method") == "quanto", config
        # The copy loads pre-quantized and samples. float32: in bfloat16 it crashes the server
        # (see test_prequantized_quanto_copy_samples_in_bfloat16).
        entry = comfy_server.run(reload_prompt(folder.name, "float32"), timeout=150)
        assert_success(entry, comfy_server)
        assert "quanto (pre-quantized)" in entry["outputs"]["2"]["text"][0]
        assert entry["outputs"]["4"]["images"], entry["outputs"]


def reload_prompt(model: str, dtype: str) -> dict:
    """Load `model` with no quantization node, report it and draw one image."""
    return {
        "1": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {"model": model, "dtype": dtype, "device": "cpu", "offload": "none"},
        },
        "2": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["1", 0]}},
        "3": {
            "class_type": "PipeQuantSampler",
            "inputs": {
                "pipeline": ["1", 0],
                "prompt": "a cat",
                "negative_prompt": "",
                "steps": 2,
                "guidance_scale": 3.5,
                "width": SIZE,
                "height": SIZE,
                "seed": 1,
                "batch_size": 1,
                "max_sequence_length": 32,
            },
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"pq-it-reload-{dtype}"}},
    }


def test_prequantized_quanto_copy_samples_in_bfloat16(comfy_server):
    ui, prompt = example("FLUX quantize once and save")
    prompt = cpu_variant("save-bf16", prompt)
    assert_success(comfy_server.run(prompt, ui, timeout=150), comfy_server)
    entry = comfy_server.run(reload_prompt("save-bf16-quanto-int8", "bfloat16"), timeout=150)
    assert_success(entry, comfy_server)
    assert_server_serves(comfy_server)


def bnb_examples() -> list[str]:
    """Examples with a bitsandbytes Backend node, read from the JSON (collection stays cheap)."""

    def bnb(name: str) -> bool:
        workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
        return any(
            n.get("type") == "PipeQuantBackend" and str(n["widgets_values"][0]).startswith("bitsandbytes")
            for n in workflow["nodes"]
        )

    return [n for n in EXAMPLE_NAMES if bnb(n)]


@pytest.mark.parametrize("name", bnb_examples())
def test_bitsandbytes_example_says_it_needs_a_gpu(comfy_server, name):
    """Unchanged, the bnb examples cannot run in a CPU server (diffusers' bnb quantizer refuses to
    load without a GPU). The Load node's VALIDATE_INPUTS cannot see the linked config, so POST
    /prompt accepts the prompt; the loader then refuses before reading a weight, with a message
    naming the Quantization Backend and the fix, and the server carries on."""
    ui, prompt = example(name)
    assert uses_bitsandbytes(prompt)
    load_id = node_id(prompt, "PipeQuantLoadPipeline")
    status, body = comfy_server.queue(prompt, ui)
    if status == 400:  # validated up front: also fine, if it says why on the right node
        text = "\n".join(error_texts(e) for e in body["node_errors"].values())
        assert "GPU" in text, body
    else:
        assert status == 200, body
        entry = comfy_server.wait(body["prompt_id"])
        assert entry["status"]["status_str"] == "error"
        error = execution_error(entry)
        assert error is not None, entry["status"]
        assert error["node_id"] == load_id and error["node_type"] == "PipeQuantLoadPipeline"
        message = error["exception_message"]
        assert "needs a GPU" in message and "bitsandbytes" in message, message
        # The fix: what quantizes diffusers models on CPU in the server's environment (sdnq too, where installed).
        assert "use torchao int8_weight_only" in message and "quanto" in message, message
        assert '"transformer"' in message, message  # the component at fault
        assert "Traceback" not in message
        assert not any(i in entry["outputs"] for i, n in prompt.items() if n["class_type"] == "SaveImage")
    assert_server_serves(comfy_server)


# -- bad input: 400 with node_errors on the node at fault -------------------------------------------
BAD_BACKEND_INPUTS = {
    "unknown backend": (
        {"backend": "bitsandbytes_4bits"},
        "backend",
        ['unknown backend "bitsandbytes_4bits"', 'did you mean "bitsandbytes_4bit"?'],
    ),
    "quant type of another backend": (
        {"backend": "torchao", "quant_type": "nf4"},
        "quant_type",
        ['"nf4" is a quant type of bitsandbytes_4bit, not of torchao', "torchao has: int8_weight_only"],
    ),
    "quant type typo": (
        {"backend": "torchao", "quant_type": "int8_weightonly"},
        "quant_type",
        ['did you mean "int8_weight_only"?'],
    ),
    "options not JSON": (
        {"options": "{double_quant: true}"},
        "options",
        ["options is not valid JSON", "double quotes"],
    ),
    "unknown option": (
        {"options": '{"double_quantt": true}'},
        "options.double_quantt",
        ['has no option "double_quantt"', 'did you mean "double_quant"?'],
    ),
}


@pytest.mark.parametrize("case", list(BAD_BACKEND_INPUTS))
def test_bad_backend_input_is_said_once_on_the_backend_node(comfy_server, case):
    """One wrong input, one error, on that input. ComfyUI files a VALIDATE_INPUTS failure once per
    argument the function takes, so the Backend's takes `options` alone: broken JSON is a 400 with
    one error; a choice ComfyUI lists is its own `value_not_in_list`, once; the rest fails when the
    Backend node runs (first, before any weight is read), with the message naming the input."""
    inputs, field, expected = BAD_BACKEND_INPUTS[case]
    ui, prompt = example("FLUX NF4 transformer")
    backend_id = node_id(prompt, "PipeQuantBackend")
    prompt[backend_id]["inputs"].update(inputs)
    status, body = comfy_server.queue(prompt, ui)
    if status == 400:
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert set(body["node_errors"]) == {backend_id}, body["node_errors"]
        errors = body["node_errors"][backend_id]["errors"]
        assert len(errors) == 1, errors  # not once per argument
        assert errors[0]["extra_info"]["input_name"] == field.split(".")[0], errors
        text = error_texts(body["node_errors"][backend_id])
        if errors[0]["type"] == "custom_validation_failed":
            assert f"Quantization Backend › {field}:" in text, text
            for fragment in expected:
                assert fragment in text, text
        else:
            assert errors[0]["type"] == "value_not_in_list", errors
    else:
        assert status == 200, body
        entry = comfy_server.wait(body["prompt_id"])
        error = execution_error(entry)
        assert error is not None and error["node_id"] == backend_id, entry["status"]
        message = error["exception_message"]
        assert f"Quantization Backend › {field}:" in message, message
        for fragment in expected:
            assert fragment in message, message
        assert "Traceback" not in message
    assert_server_serves(comfy_server)


def test_unknown_model_is_a_400_on_the_load_node(comfy_server):
    ui, prompt = example("SD3.5 torchao int8 (global)")
    load_id = node_id(prompt, "PipeQuantLoadPipeline")
    prompt[load_id]["inputs"]["model"] = "stable-diffusion-3.5-medum"
    status, body = comfy_server.queue(prompt, ui)
    assert status == 400, body
    assert set(body["node_errors"]) == {load_id}, body["node_errors"]
    text = error_texts(body["node_errors"][load_id])
    assert "Load Quantized Pipeline › model:" in text and 'did you mean "stable-diffusion-3.5-medium"?' in text, text
    # Once, on `model` (ComfyUI files a VALIDATE_INPUTS failure per argument: it takes the model alone).
    assert [e["extra_info"]["input_name"] for e in body["node_errors"][load_id]["errors"]] == ["model"]


# -- errors found while running ---------------------------------------------------------------------
def test_component_typo_is_an_execution_error_and_the_server_carries_on(comfy_server):
    """A Per-Component Map's component is checked against the model only when the loader runs:
    ComfyUI reports it as an execution_error in /history, with our message, then keeps working."""
    ui, prompt = example("FLUX GGUF transformer")
    map_id, load_id = node_id(prompt, "PipeQuantComponentMap"), node_id(prompt, "PipeQuantLoadPipeline")
    prompt[map_id]["inputs"]["component"] = "transformr"
    status, body = comfy_server.queue(prompt, ui)
    assert status == 200 and body["node_errors"] == {}, body
    entry = comfy_server.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    error = execution_error(entry)
    assert error is not None and error["node_id"] == load_id, entry["status"]
    message = error["exception_message"]
    assert "Per-Component Map (transformr) › component:" in message, message
    assert 'has no component "transformr"' in message and 'did you mean "transformer"?' in message, message
    assert_server_serves(comfy_server)

    # ... and still runs prompts: load the pipeline unquantized and report it.
    prompt = {
        "1": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {"model": "FLUX.1-dev", "dtype": "bfloat16", "device": "cpu", "offload": "none"},
        },
        "2": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["1", 0]}},
    }
    entry = comfy_server.run(prompt)
    assert_success(entry, comfy_server)
    assert "TOTAL" in entry["outputs"]["2"]["text"][0]
