"""The nodes as ComfyUI calls them: INPUT_TYPES, VALIDATE_INPUTS, then FUNCTION under inference_mode."""

from __future__ import annotations

import inspect

import pytest
import torch

import pipequant
from pipequant.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from pipequant.resolver import BackendSpec, ComponentMap, ValidationError

Backend = NODE_CLASS_MAPPINGS["PipeQuantBackend"]
Map = NODE_CLASS_MAPPINGS["PipeQuantComponentMap"]
Load = NODE_CLASS_MAPPINGS["PipeQuantLoadPipeline"]
Sampler = NODE_CLASS_MAPPINGS["PipeQuantSampler"]
Report = NODE_CLASS_MAPPINGS["PipeQuantMemoryReport"]
Save = NODE_CLASS_MAPPINGS["PipeQuantSavePipeline"]


@pytest.fixture
def roots(monkeypatch, models_root, tiny_flux, flux_gguf):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.setenv("PIPEQUANT_GGUF", str(flux_gguf.parent))
    return models_root


def run(node_class, **kwargs):
    """Call a node as ComfyUI's executor does."""
    with torch.inference_mode():
        return getattr(node_class(), node_class.FUNCTION)(**kwargs)


def test_contract_ids_and_display_names():
    assert pipequant.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert NODE_DISPLAY_NAME_MAPPINGS == {
        "PipeQuantBackend": "Quantization Backend",
        "PipeQuantComponentMap": "Per-Component Map",
        "PipeQuantLoadPipeline": "Load Quantized Pipeline",
        "PipeQuantSampler": "Quantized Pipeline Sampler",
        "PipeQuantMemoryReport": "Pipeline Memory Report",
        "PipeQuantSavePipeline": "Save Quantized Pipeline",
        "PipeQuantAutoPlan": "Auto Quantization Plan",
        "PipeQuantLoRA": "Apply LoRA",
        "PipeQuantQualityCheck": "Plan Quality Check",
        "PipeQuantToComfy": "Pipeline to ComfyUI",
        "PipeQuantEncodePrompt": "Encode Prompt with Pipeline",
    }
    names = {
        k: list(v.INPUT_TYPES()["required"]) + list(v.INPUT_TYPES().get("optional", {}))
        for k, v in NODE_CLASS_MAPPINGS.items()
    }
    assert names["PipeQuantBackend"][:5] == ["backend", "quant_type", "compute_dtype", "components", "options"]
    assert names["PipeQuantComponentMap"][:3] == ["component", "config", "map"]
    assert names["PipeQuantLoadPipeline"][:5] == ["model", "dtype", "device", "offload", "quantization"]
    assert names["PipeQuantSampler"][:9] == [
        "pipeline",
        "prompt",
        "negative_prompt",
        "steps",
        "guidance_scale",
        "width",
        "height",
        "seed",
        "batch_size",
    ]
    assert names["PipeQuantSavePipeline"] == ["pipeline", "folder_name"]
    # `expert` came later: optional and last, so saved workflows keep their widget positions
    assert names["PipeQuantLoRA"] == ["pipeline", "lora_name", "strength", "strength_text_encoder", "expert"]
    assert "expert" in NODE_CLASS_MAPPINGS["PipeQuantLoRA"].INPUT_TYPES()["optional"]
    assert names["PipeQuantSampler"][9:13] == ["max_sequence_length", "image", "mask", "denoise"]
    assert names["PipeQuantAutoPlan"] == [
        "model",
        "budget_gb",
        "goal",
        "width",
        "height",
        "batch_size",
        "allow_offload",
        "num_frames",
    ]
    assert NODE_CLASS_MAPPINGS["PipeQuantAutoPlan"].RETURN_TYPES == ("PIPELINE_QUANT_CONFIG", "STRING")
    assert names["PipeQuantQualityCheck"] == [
        "model",
        "prompt",
        "seed",
        "steps",
        "width",
        "height",
        "measure",
        "quantization",
        "dtype",
        "device",
        "offload",
        "components",
    ]
    assert NODE_CLASS_MAPPINGS["PipeQuantQualityCheck"].RETURN_TYPES == ("STRING", "IMAGE")
    assert names["PipeQuantToComfy"] == ["pipeline", "expert"]  # expert: optional, last (Wan 2.2's two)
    assert "expert" in NODE_CLASS_MAPPINGS["PipeQuantToComfy"].INPUT_TYPES()["optional"]
    assert NODE_CLASS_MAPPINGS["PipeQuantToComfy"].RETURN_TYPES == ("MODEL", "VAE")
    assert names["PipeQuantEncodePrompt"] == ["pipeline", "text", "width", "height", "max_sequence_length"]
    assert NODE_CLASS_MAPPINGS["PipeQuantEncodePrompt"].RETURN_TYPES == ("CONDITIONING",)


@pytest.mark.parametrize("node_id", list(NODE_CLASS_MAPPINGS))
def test_every_input_has_a_tooltip_and_node_a_description(node_id, roots):
    node = NODE_CLASS_MAPPINGS[node_id]
    assert node.CATEGORY == "PipeQuant" and len(node.DESCRIPTION) > 40
    assert callable(getattr(node, node.FUNCTION))
    for section in ("required", "optional"):
        for name, entry in node.INPUT_TYPES().get(section, {}).items():
            assert len(entry) > 1 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    if getattr(node, "VALIDATE_INPUTS", None):
        assert isinstance(inspect.getattr_static(node, "VALIDATE_INPUTS"), classmethod)


def test_combos_come_from_the_catalogue_and_model_folders(roots):
    spec = Backend.INPUT_TYPES()
    assert "torchao" in spec["required"]["backend"][0]
    assert {"nf4", "int8_weight_only", "int2"} <= set(spec["required"]["quant_type"][0])
    assert "tiny-flux-transformer-Q8_0.gguf" in spec["optional"]["gguf_file"][0]
    assert "tiny-flux" in Load.INPUT_TYPES()["required"]["model"][0]


def test_backend_validate_inputs_names_node_input_and_fix(roots):
    ok = Backend.check("torchao", "int8_weight_only", "auto", "", "{}")
    assert ok is True
    msg = Backend.check("torchao", "nf4", "auto", "", '{"group_sise": 1}')
    assert msg.startswith("Quantization Backend › quant_type:") and "bitsandbytes_4bit" in msg
    assert "Quantization Backend › options.group_sise" in msg and 'did you mean "group_size"' in msg
    bad_json = Backend.check("torchao", "int8_weight_only", "auto", "", "{double_quant: true}")
    assert "Quantization Backend › options: options is not valid JSON" in bad_json
    # gguf is allowed on the Backend node: the config may feed a Per-Component Map.
    assert Backend.check("gguf", "from_file", "auto", "", "{}", "tiny-flux-transformer-Q8_0.gguf") is True
    no_file = Backend.check("gguf", "from_file", "auto", "", "{}", "none")
    assert [p.code for p in no_file.problems] == ["gguf_file_required"]


def test_validate_inputs_takes_one_input_so_a_problem_is_said_once(roots):
    """ComfyUI files a VALIDATE_INPUTS failure once per argument the function takes (issue 26: one
    wrong model read as 7 errors on frontend 1.58.1): each node's takes one input, and what needs
    several inputs together is checked when the node runs, before any weight is read."""
    for node in NODE_CLASS_MAPPINGS.values():
        validate = getattr(node, "VALIDATE_INPUTS", None)
        if validate is not None:
            assert len(inspect.getfullargspec(validate).args) == 2, node  # cls + one input
            assert inspect.getfullargspec(validate).varkw is None, node  # **kwargs takes them all
    assert "Load Quantized Pipeline › model:" in Load.VALIDATE_INPUTS("tiny-flx")
    assert Load.VALIDATE_INPUTS("tiny-flux") is True
    assert "Quantization Backend › options: options is not valid JSON" in Backend.VALIDATE_INPUTS(
        "{double_quant: true}"
    )
    assert Backend.VALIDATE_INPUTS('{"group_sise": 1}') is True  # a key is checked against the quant type at run
    with pytest.raises(ValidationError, match="options.group_sise"):
        Backend().build("torchao", "int8_weight_only", "auto", "", '{"group_sise": 1}')


def test_load_validate_inputs_checks_model_and_device(roots):
    assert Load.check("tiny-flux", "bfloat16", "cpu", "none") is True
    msg = Load.check("tiny-flx", "bfloat16", "cpu", "none")
    assert msg.startswith("Load Quantized Pipeline › model:") and 'did you mean "tiny-flux"' in msg
    assert "Load Quantized Pipeline › device" in Load.check("tiny-flux", "bfloat16", "tpu", "none")
    outside = Load.check("../etc", "bfloat16", "cpu", "none")
    assert [p.code for p in outside.problems] == ["model_outside_roots"]
    assert "are refused" in outside and "model_outside_roots" not in outside  # the user reads words, not codes


def test_backend_and_map_build_specs():
    (spec,) = run(
        Backend,
        backend="quanto",
        quant_type="int8",
        compute_dtype="auto",
        components="transformer, text_encoder_2",
        options="{}",
    )
    assert spec == BackendSpec.make("quanto", "int8", components=["transformer", "text_encoder_2"])
    (cfg,) = run(
        Backend, backend="torchao", quant_type="int8_weight_only", compute_dtype="auto", components="", options="{}"
    )
    (m1,) = run(Map, component="transformer", config=cfg)
    (m2,) = run(Map, component="vae", map=m1)  # no config: leave unquantized
    assert isinstance(m2, ComponentMap) and m2.as_dict() == {"transformer": cfg, "vae": None}
    with pytest.raises(
        ValidationError, match="Per-Component Map \\(transformer\\) › component: .*already mapped upstream"
    ):
        run(Map, component="transformer", config=cfg, map=m2)
    with pytest.raises(
        ValidationError, match="Per-Component Map \\(vae\\) › config: a Per-Component Map was connected"
    ):
        run(Map, component="vae", config=m1)


def test_load_sample_report_in_inference_mode(roots):
    (cfg,) = run(
        Backend,
        backend="torchao",
        quant_type="int8_weight_only",
        compute_dtype="auto",
        components="transformer",
        options="{}",
    )
    pipeline, text = run(Load, model="tiny-flux", dtype="bfloat16", device="cpu", offload="none", quantization=cfg)
    assert "torchao:int8_weight_only" in text and "TOTAL" in text
    (images,) = run(
        Sampler,
        pipeline=pipeline,
        prompt="a cat",
        negative_prompt="",
        steps=2,
        guidance_scale=3.5,
        width=32,
        height=48,
        seed=3,
        batch_size=2,
        max_sequence_length=32,
    )
    assert images.shape == (2, 48, 32, 3) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    (again,) = run(
        Sampler,
        pipeline=pipeline,
        prompt="a cat",
        negative_prompt="",
        steps=2,
        guidance_scale=3.5,
        width=32,
        height=48,
        seed=3,
        batch_size=2,
        max_sequence_length=32,
    )
    assert torch.equal(images, again)  # same seed, same image
    out = run(Report, pipeline=pipeline)
    assert out["result"][0] == out["ui"]["text"][0] and "transformer" in out["ui"]["text"][0]


def test_loader_names_the_upstream_node_at_fault(roots):
    (cfg,) = run(Backend, backend="quanto", quant_type="int8", compute_dtype="auto", components="", options="{}")
    (m,) = run(Map, component="text_encoder3", config=cfg)
    with pytest.raises(ValidationError) as err:
        run(Load, model="tiny-flux", dtype="bfloat16", device="cpu", offload="none", quantization=m)
    assert str(err.value).startswith("Per-Component Map (text_encoder3) › component:")
    assert 'did you mean "text_encoder"' in str(err.value)


def test_save_refuses_unsavable_and_writes_savable(roots, tmp_path, monkeypatch):
    """quanto cannot save transformers models; the same plan on a diffusers model saves and
    loads back pre-quantized."""
    monkeypatch.setenv("PIPEQUANT_MODELS", str(tmp_path) + ":" + str(roots))
    import shutil

    shutil.copytree(roots / "tiny-flux", tmp_path / "tiny-flux")
    (qt5,) = run(
        Backend, backend="quanto", quant_type="int8", compute_dtype="auto", components="text_encoder_2", options="{}"
    )
    pipe, _ = run(Load, model="tiny-flux", dtype="bfloat16", device="cpu", offload="none", quantization=qt5)
    with pytest.raises(
        ValidationError, match="Save Quantized Pipeline › pipeline: .*quanto.*cannot be saved for a transformers model"
    ):
        run(Save, pipeline=pipe, folder_name="flux-quanto-t5")
    with pytest.raises(ValidationError, match="Save Quantized Pipeline › folder_name"):
        run(Save, pipeline=pipe, folder_name="../escape")
    assert not (tmp_path / "flux-quanto-t5").exists()
    (q,) = run(
        Backend, backend="quanto", quant_type="int8", compute_dtype="auto", components="transformer", options="{}"
    )
    pipe, _ = run(Load, model="tiny-flux", dtype="bfloat16", device="cpu", offload="none", quantization=q)
    out = run(Save, pipeline=pipe, folder_name="flux-quanto-int8")
    dest = tmp_path / "flux-quanto-int8"
    assert str(dest) in out["ui"]["text"][0]
    assert (dest / "model_index.json").is_file()
    assert list((dest / "transformer").glob("*.safetensors")) and not list(dest.rglob("*.bin"))
    # and it loads back pre-quantized through the same node
    reloaded, text = run(Load, model="flux-quanto-int8", dtype="bfloat16", device="cpu", offload="none")
    from helpers import quantized_weight_types

    assert quantized_weight_types(reloaded.pipeline.transformer)
    row = next(r for r in reloaded.rows if r["component"] == "transformer")
    assert (row["action"], row["backend"]) == ("pre-quantized", "quanto") and "pre-quantized" in text
    (again,) = run(Map, component="transformer", config=q)
    with pytest.raises(ValidationError, match="transformer.*already quantized"):
        run(Load, model="flux-quanto-int8", dtype="bfloat16", device="cpu", offload="none", quantization=again)
    with pytest.raises(ValidationError, match="already exists"):
        run(Save, pipeline=pipe, folder_name="flux-quanto-int8")


def test_is_changed_follows_the_files_on_disk(roots, tmp_path, monkeypatch):
    import os
    import shutil

    shutil.copytree(roots / "tiny-flux", tmp_path / "tiny-flux")
    monkeypatch.setenv("PIPEQUANT_MODELS", str(tmp_path))
    first = Load.IS_CHANGED(model="tiny-flux", dtype="bfloat16")
    assert first == Load.IS_CHANGED(model="tiny-flux", dtype="bfloat16")
    weights = next((tmp_path / "tiny-flux" / "vae").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert Load.IS_CHANGED(model="tiny-flux", dtype="bfloat16") != first


def test_saved_quanto_copy_samples_in_bfloat16(roots, tmp_path):
    """A saved quanto int8 copy is memory-mapped at load; quanto's CPU kernel segfaulted on its
    unaligned int8 data. Runs in a child process so that a regression cannot take pytest down."""
    import subprocess
    import sys

    script = f"""
import torch
from pipequant.resolver import BackendSpec, ComponentCache, load
from pipequant.resolver.keep.save import save
from pipequant.resolver.run.sample import generate
with torch.inference_mode():
    r = load({str(roots / "tiny-flux")!r}, BackendSpec.make("quanto", "int8", components=["transformer"]),
             device="cpu", cache=None)
    dest = save(r, "saved", __import__("pathlib").Path({str(tmp_path)!r}))
    again = load(dest, None, device="cpu", cache=ComponentCache())
    assert again.rows and any(x["action"] == "pre-quantized" and x["device"] == "cpu" for x in again.rows)
    image = generate(again.pipeline, prompt="a cat", steps=2, width=32, height=32, max_sequence_length=32)
    assert torch.isfinite(image).all()
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), (out.returncode, out.stderr[-1500:])


@pytest.mark.parametrize("quant_type", ["int8_weight_only", "float8_weight_only"])
def test_torchao_saves_and_reloads_bit_exact(roots, tmp_path, quant_type):
    """torchao's int8/float8 tensors round-trip through safetensors, diffusers and transformers
    models alike, and the reloaded pipeline draws the same image."""
    from pipequant.resolver import ComponentCache
    from pipequant.resolver.keep import load
    from pipequant.resolver.keep.save import save
    from pipequant.resolver.run.sample import generate

    spec = BackendSpec.make("torchao", quant_type, components=["transformer", "text_encoder_2"])
    with torch.inference_mode():
        first = load(roots / "tiny-flux", spec, device="cpu", cache=None)
        before = generate(first.pipeline, prompt="a cat", steps=2, width=32, height=32, max_sequence_length=32)
        dest = save(first, "ao", tmp_path)
        again = load(dest, None, device="cpu", cache=ComponentCache())
        after = generate(again.pipeline, prompt="a cat", steps=2, width=32, height=32, max_sequence_length=32)
    actions = {r["component"]: (r["action"], r["backend"]) for r in again.rows}
    assert actions["transformer"] == actions["text_encoder_2"] == ("pre-quantized", "torchao")
    assert torch.equal(before, after)


def test_torchao_int4_is_not_savable():
    from pipequant.resolver.known import catalogue

    torchao = catalogue.get_backend("torchao")
    assert torchao.quant_type("int4_weight_only").savable is False
    assert torchao.quant_type("int8_weight_only").savable is True


def test_a_first_quanto_int4_load_on_cpu_says_it_builds_an_extension(tiny_flux, monkeypatch):
    """quanto int4 on CPU compiles a C++ extension on first use (minutes, progress stuck at 0):
    the Load node says so as progress text before it starts."""
    from pipequant.nodes import load as load_node
    from pipequant.resolver.keep.load import plan_load
    from pipequant.resolver.known.backends import quanto
    from pipequant.resolver.links.spec import BackendSpec

    monkeypatch.setattr(quanto, "cpp_extension_built", lambda: False)
    monkeypatch.setattr(quanto, "missing_build_tools", lambda: [])
    int4 = BackendSpec.make("quanto", "int4", "auto", {}, ("transformer",), None)
    assert load_node.first_use_notes(plan_load(tiny_flux, int4, device="cpu")) == [quanto.BUILD_NOTE]
    int8 = BackendSpec.make("quanto", "int8", "auto", {}, ("transformer",), None)
    assert load_node.first_use_notes(plan_load(tiny_flux, int8, device="cpu")) == []
    monkeypatch.setattr(quanto, "cpp_extension_built", lambda: True)
    assert load_node.first_use_notes(plan_load(tiny_flux, int4, device="cpu")) == []


def test_gguf_combo_lists_only_files_the_gguf_backend_can_take(monkeypatch, tmp_path):
    """Text-encoder GGUFs are refused by the gguf backend (diffusers models only): not offered."""
    from types import SimpleNamespace

    from pipequant.nodes import host

    folders = {kind: tmp_path / kind for kind in ("diffusion_models", "unet", "text_encoders", "diffusers")}
    for kind, folder in folders.items():
        folder.mkdir()
        (folder / f"{kind}-file.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(
        host,
        "folder_paths",
        SimpleNamespace(get_folder_paths=lambda kind: [str(folders[kind])] if kind in folders else []),
    )
    monkeypatch.delenv("PIPEQUANT_GGUF", raising=False)
    monkeypatch.delenv("PIPEQUANT_MODELS", raising=False)
    offered = set(Backend.INPUT_TYPES()["optional"]["gguf_file"][0])
    assert {"diffusion_models-file.gguf", "unet-file.gguf", "diffusers-file.gguf"} <= offered
    assert "text_encoders-file.gguf" not in offered


def test_did_you_mean_offers_only_what_the_chosen_quant_type_takes(roots):
    """Issue 26 item 6: a suggestion followed must not lead to a second error. torchao's
    int8_weight_only takes no group_size (int4 does); broken JSON on a torchao node shows a torchao
    example, not bitsandbytes' double_quant."""
    typo = Backend.check("torchao", "int8_weight_only", "auto", "", '{"group_sise": 1}')
    assert "options.group_sise" in typo and "group_size" not in typo, typo
    assert "modules_to_not_convert" in typo
    assert 'did you mean "group_size"' in Backend.check("torchao", "int4_weight_only", "auto", "", '{"group_sise": 1}')
    broken = Backend.check("torchao", "int8_weight_only", "auto", "", "{group_size: 1}")
    assert "not valid JSON" in broken and "double_quant" not in broken and "modules_to_not_convert" in broken, broken
    assert "double_quant" in Backend.check("bitsandbytes_4bit", "nf4", "auto", "", "{double_quant: true}")


def test_the_packs_import_drops_only_the_known_third_party_warnings():
    """Issue 26 item 9: four warnings on a CPU ComfyUI's log came from the pack's first use of its
    backends; each is dropped on its own logger by its text, other warnings there still show."""
    import logging

    from pipequant.nodes.known_noise import KNOWN_NOISE

    def passes(name, msg):
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None)
        return bool(logging.getLogger(name).filter(record))

    for name, start in KNOWN_NOISE.items():
        assert not passes(name, start + " (and the rest of the message)"), name
        assert passes(name, "something else went wrong"), name
    assert passes("torch.utils.cpp_extension", "No CUDA runtime is found")  # not one of them
