"""Pipeline to ComfyUI + Encode Prompt with Pipeline: the quantized pipeline in core's own graph.

- Without ComfyUI: the FLUX adapter's packing equals diffusers' own (_pack_latents, ids,
  _unpack_latents); an unmapped family and ControlNet residuals are refused with a clear message.
- With COMFYUI_DIR (ComfyUI's python, tests/bridge_exactness.py): one call through the bridged
  MODEL's apply_model equals the diffusers module's output for FLUX, Chroma, SD3, SD1 and SDXL
  (int8 torchao weights for the built tiny pipelines, bf16), and the CONDITIONING equals the
  pipeline's encode_prompt; a standard-architecture VAE becomes ComfyUI's own VAE and decodes as
  diffusers does.
- In a real ComfyUI server (CPU): Load -> Pipeline to ComfyUI -> KSampler -> VAEDecode -> SaveImage,
  conditioning from Encode Prompt with Pipeline, for tiny FLUX, SD3 and SD1; core nodes on the
  bridged MODEL (FLUX: ModelSamplingFlux, FluxGuidance, ConditioningZeroOut; SD3: ModelSamplingSD3,
  ConditioningCombine, SamplerCustomAdvanced + CFGGuider; SD1: InpaintModelConditioning at half denoise); /free then a second run; a pipeline fed into KSampler's model is refused before
  Run; core LoraLoaderModelOnly is refused naming Apply LoRA; no traceback for the good runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from comfy_server import comfy_server, comfyui_dir, comfyui_python, skip_reason  # noqa: F401  (a fixture)

from pipequant.resolver.keep.load import load
from pipequant.resolver.run.context import diffusers_context

PACK_DIR = Path(__file__).resolve().parent.parent
LATENT = 256  # EmptyLatent width/height: the tiny VAEs keep the size, so a 32 x 32 latent and image


# -- without ComfyUI ---------------------------------------------------------------------------------
def test_flux_adapter_packs_as_diffusers_does(tiny_flux):
    from pipequant.nodes.bridge.adapters import FluxAdapter

    result = load(tiny_flux, None, dtype="float32", device="cpu", cache=None)
    pipe = result.pipeline
    adapter = FluxAdapter(result, pipe.transformer)
    g = torch.Generator().manual_seed(0)
    x, ctx, pooled = torch.randn(2, 16, 6, 10, generator=g), torch.randn(2, 5, 128), torch.randn(2, 128)
    t, guidance = torch.tensor([0.3, 0.8]), torch.tensor([3.5, 2.0])
    with torch.inference_mode():  # as ComfyUI calls it
        out = adapter(x, t, ctx, y=pooled, guidance=guidance)
    with diffusers_context():
        packed = pipe._pack_latents(x, 2, 16, 6, 10)
        v = pipe.transformer(
            hidden_states=packed,
            encoder_hidden_states=ctx,
            pooled_projections=pooled,
            timestep=t,
            img_ids=pipe._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32),
            txt_ids=torch.zeros(5, 3),
            guidance=guidance,
            return_dict=False,
        )[0]
        expected = pipe._unpack_latents(v, 48, 80, 8)
    assert out.shape == x.shape
    assert torch.equal(out, expected)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="ControlNet"):
        adapter(x, t, ctx, y=pooled, guidance=guidance, control={"input": [x]})
    # FreeU-style patches reach into ComfyUI's own network: refused, never silently ignored.
    with torch.inference_mode(), pytest.raises(RuntimeError, match="patches.output_block_patch"):
        adapter(x, t, ctx, y=pooled, guidance=guidance, transformer_options={"patches": {"output_block_patch": [abs]}})


def test_unmapped_family_is_refused_naming_the_families_that_work(tiny_flux):
    from types import SimpleNamespace

    from pipequant.nodes.messages import NodeInputError
    from pipequant.nodes.to_comfy import PipeQuantToComfy

    class WanPipeline:  # a family the bridge has no mapping for
        transformer = torch.nn.Linear(1, 1)

    fake = SimpleNamespace(pipeline=WanPipeline(), plan=SimpleNamespace(model=SimpleNamespace(folder=tiny_flux)))
    with pytest.raises(NodeInputError) as info:
        PipeQuantToComfy().convert(fake)
    text = info.value.render()
    assert "Pipeline to ComfyUI › pipeline" in text and "WanPipeline" in text
    assert "FLUX.1" in text and "SDXL" in text and "Stable Diffusion 3" in text


# -- in ComfyUI's python ----------------------------------------------------------------------------
def _comfy_env(folder: Path) -> dict:
    """`import pipequant` from this checkout (a link named pipequant), then ComfyUI's own modules."""
    (folder / "pipequant").symlink_to(PACK_DIR, target_is_directory=True)
    paths = [str(folder), str(comfyui_dir())]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.comfyui
def test_bridged_model_and_conditioning_equal_diffusers(models_root, tiny_flux, tiny_sd3, tiny_sd, tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    python = comfyui_python(comfyui_dir())
    run = subprocess.run(
        [str(python), str(Path(__file__).parent / "bridge_exactness.py"), str(models_root)],
        cwd=comfyui_dir(),
        env=_comfy_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert run.returncode == 0 and line, f"{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    measured = json.loads(line[len("RESULT ") :])
    print(json.dumps(measured, indent=1))
    for name, m in measured.pop("vae").items():  # standard architecture: ComfyUI's own VAE
        assert m["comfy_class"] in ("AutoencoderKL", "AutoencodingEngine") and m["decode_max_abs_error"] < 1e-4, (
            name,
            m,
        )
    memory = measured.pop("memory")
    assert memory == {
        "pack_entries_before": 1,
        "owners_after_load": 1,
        "size_is_real_bytes": True,
        "loaded_size_equals_size": True,
        "owners_after_unload_all": 0,
        "loaded_size_after_unload": 0,
    }, memory
    assert set(measured) == {"flux", "chroma", "sd3", "sd", "sdxl"}
    for family, m in measured.items():
        # Within bf16 rounding of the output (the same module runs the same bf16 inputs).
        assert m["denoiser_max_abs_error"] <= 2**-8 * m["output_scale"], (family, m)
        assert m.get("conditioning_max_abs_error", 0.0) == 0.0, (family, m)


# -- in a real ComfyUI server -----------------------------------------------------------------------
def bridge_prompt(model: str, family: str, seed: int = 1) -> dict:
    """Load -> Pipeline to ComfyUI -> (core sampling nodes) -> VAEDecode -> SaveImage."""
    prompt = {
        "1": {
            "class_type": "PipeQuantBackend",
            "inputs": {
                "backend": "torchao",
                "quant_type": "int8_weight_only",
                "compute_dtype": "auto",
                "components": "",
                "options": "{}",
            },
        },
        "2": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {
                "model": model,
                "dtype": "bfloat16",
                "device": "cpu",
                "offload": "none",
                "quantization": ["1", 0],
            },
        },
        "3": {"class_type": "PipeQuantToComfy", "inputs": {"pipeline": ["2", 0]}},
        "4": {"class_type": "PipeQuantEncodePrompt", "inputs": {"pipeline": ["2", 0], "text": "a lighthouse"}},
        "5": {"class_type": "PipeQuantEncodePrompt", "inputs": {"pipeline": ["2", 0], "text": "blurry"}},
        "7": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["3", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 1.0 if family == "flux" else 3.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["4", 0],
                "negative": ["5", 0],
                "latent_image": ["6", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"pq-bridge-{family}"}},
    }
    if family == "sd":
        prompt["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": LATENT, "height": LATENT, "batch_size": 1}}
    else:
        prompt["6"] = {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": LATENT, "height": LATENT, "batch_size": 1},
        }
    if family == "flux":  # core's FLUX patches on the bridged MODEL
        prompt["10"] = {
            "class_type": "ModelSamplingFlux",
            "inputs": {"model": ["3", 0], "max_shift": 1.15, "base_shift": 0.5, "width": LATENT, "height": LATENT},
        }
        prompt["11"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 4.0}}
        prompt["12"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}}
        prompt["7"]["inputs"].update(model=["10", 0], positive=["11", 0], negative=["12", 0])
    if family == "sd3":  # core's custom sampling: SamplerCustomAdvanced with CFGGuider
        prompt["10"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["3", 0], "shift": 3.0}}
        prompt["11"] = {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["4", 0], "conditioning_2": ["5", 0]},
        }
        prompt["7"] = {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["14", 0],
                "guider": ["15", 0],
                "sampler": ["16", 0],
                "sigmas": ["17", 0],
                "latent_image": ["6", 0],
            },
        }
        prompt["14"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
        prompt["15"] = {
            "class_type": "CFGGuider",
            "inputs": {"model": ["10", 0], "positive": ["11", 0], "negative": ["5", 0], "cfg": 3.0},
        }
        prompt["16"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        prompt["17"] = {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["10", 0], "scheduler": "simple", "steps": 2, "denoise": 1.0},
        }
    if family == "sd":  # inpainting through core: VAEEncode inside InpaintModelConditioning, half denoise
        prompt["10"] = {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 8421504},
        }
        prompt["12"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}
        prompt["13"] = {
            "class_type": "InpaintModelConditioning",
            "inputs": {
                "positive": ["4", 0],
                "negative": ["5", 0],
                "vae": ["3", 1],
                "pixels": ["10", 0],
                "mask": ["12", 0],
                "noise_mask": True,
            },
        }
        prompt["7"]["inputs"].update(positive=["13", 0], negative=["13", 1], latent_image=["13", 2], denoise=0.5)
    return prompt


BRIDGE_MODELS = {"flux": "FLUX.1-dev", "sd3": "stable-diffusion-3.5-medium", "sd": "tiny-sd"}


@pytest.fixture(scope="module")
def bridge_server(comfy_server, models_root, tiny_sd):  # noqa: F811
    target = comfy_server.models_root / "tiny-sd"
    if not target.exists():
        shutil.copytree(tiny_sd, target)
    return comfy_server


def _run_ok(server, prompt) -> dict:
    entry = server.run(prompt, timeout=300)
    status = entry["status"]
    assert status.get("status_str") == "success", f"{json.dumps(status)[:3000]}\n{server.log_tail(80)}"
    return entry


def _image_of(server, entry) -> Path:
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 1
    path = server.output_dir / images[0]["subfolder"] / images[0]["filename"]
    assert path.is_file()
    return path


@pytest.mark.comfyui
def test_core_ksampler_runs_the_bridged_pipelines(bridge_server):
    server = bridge_server
    start = len(server.log())
    for family, model in BRIDGE_MODELS.items():
        path = _image_of(server, _run_ok(server, bridge_prompt(model, family)))
        from PIL import Image

        assert Image.open(path).size == (32, 32), family
    # ComfyUI's "Unload models" + "Free model and node cache", then the same workflows run again.
    status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    _image_of(server, _run_ok(server, bridge_prompt(BRIDGE_MODELS["flux"], "flux", seed=2)))
    log = server.log()[start:]
    assert "Traceback" not in log and "!!! Exception" not in log, log[-4000:]
    assert "model_type FLUX" in log and "model_type FLOW" in log and "model_type EPS" in log


@pytest.mark.comfyui
def test_a_pipeline_into_ksampler_is_refused_before_run(bridge_server):
    prompt = bridge_prompt("FLUX.1-dev", "flux")
    prompt["7"]["inputs"]["model"] = ["2", 0]  # the DIFFUSERS_PIPELINE itself
    status, body = bridge_server.queue(prompt)
    assert status == 400, body
    assert "7" in body.get("node_errors", {}), body


@pytest.mark.comfyui
def test_core_lora_loader_on_the_bridged_model_is_refused_naming_apply_lora(bridge_server):
    from pipequant.testing.lora_files import EXAMPLE_LORA

    prompt = bridge_prompt("FLUX.1-dev", "flux", seed=3)
    prompt["20"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["3", 0], "lora_name": EXAMPLE_LORA, "strength_model": 1.0},
    }
    prompt["10"]["inputs"]["model"] = ["20", 0]
    entry = bridge_server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "error"
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert error["node_type"] == "LoraLoaderModelOnly"
    assert "Apply LoRA" in error["exception_message"], error["exception_message"]
    # The server goes on: the plain workflow still runs.
    _image_of(bridge_server, _run_ok(bridge_server, bridge_prompt("FLUX.1-dev", "flux", seed=4)))


@pytest.mark.comfyui
def test_apply_lora_before_the_bridge_reaches_ksampler(bridge_server):
    """The pack's Apply LoRA on the pipeline, then the bridge: core's KSampler samples with the
    LoRA (strength 1 changes the image; strength 0 is the plain model's image again)."""
    import numpy as np
    from PIL import Image

    from pipequant.testing.lora_files import EXAMPLE_LORA

    def image(strength=None):
        prompt = bridge_prompt("FLUX.1-dev", "flux", seed=5)
        if strength is not None:
            prompt["30"] = {
                "class_type": "PipeQuantLoRA",
                "inputs": {
                    "pipeline": ["2", 0],
                    "lora_name": EXAMPLE_LORA,
                    "strength": strength,
                    "strength_text_encoder": strength,
                },
            }
            for node in ("3", "4", "5"):
                prompt[node]["inputs"]["pipeline"] = ["30", 0]
        path = _image_of(bridge_server, _run_ok(bridge_server, prompt))
        return np.asarray(Image.open(path), dtype=np.float32)

    plain, with_lora, off = image(), image(1.0), image(0.0)
    assert np.abs(with_lora - plain).mean() > 0.5, "the LoRA did not reach the bridged MODEL"
    assert np.array_equal(off, plain)
