"""Pipeline to ComfyUI for the video families: Wan 2.1, Wan 2.2 A14B, HunyuanVideo, LTX-Video.

- Without ComfyUI: the adapter pads and calls the diffusers module as ComfyUI's WanModel would
  be called; a Wan 2.1 pipeline asked for the second expert is refused naming the node and input;
  Encode Prompt gives the pipeline's own UMT5 states, zero-padded to 512.
- With COMFYUI_DIR (ComfyUI's python, tests/bridge_exactness_video.py): one call through each bridged
  MODEL equals the diffusers module (Wan 2.1, both Wan 2.2 experts, HunyuanVideo, LTX), the CONDITIONING
  equals encode_prompt, the video VAEs decode and encode as diffusers does.
- In a real ComfyUI server (CPU): Wan 2.2 A14B's two experts into two KSamplerAdvanced split at the
  boundary step, VAEDecode, CreateVideo + SaveVideo, to a saved video, no traceback; HunyuanVideo
  through KSampler (FluxGuidance on its embedded guidance) to SaveAnimatedWEBP; LTX-Video through
  LTXVConditioning and KSampler to SaveAnimatedWEBP. (The Wan 2.1
  template, Load -> Pipeline to ComfyUI -> KSampler -> VAEDecode -> SaveVideo, runs in
  tests/test_comfyui_integration.py with every template.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from comfy_server import comfy_server, comfyui_dir, comfyui_python, skip_reason, video_size  # noqa: F401  (a fixture)
from test_comfyui_bridge import _comfy_env, _run_ok

from pipequant.resolver.keep.load import load
from pipequant.resolver.run.context import diffusers_context
from pipequant.testing.families import ensure_family

WAN22 = "Wan2.2-T2V-A14B-Diffusers"  # the tiny Wan 2.2 A14B, under its hub name in the server
HUNYUAN = "HunyuanVideo"  # the tiny HunyuanVideo
LTX = "LTX-Video"  # the tiny LTX-Video


@pytest.fixture(scope="module")
def wan21(models_root):
    return load(ensure_family("Wan 2.1", models_root), None, dtype="float32", device="cpu", cache=None)


# -- without ComfyUI ---------------------------------------------------------------------------------
def test_wan_adapter_pads_to_the_patch_and_calls_the_diffusers_module(wan21):
    from pipequant.nodes.bridge.wan import WanAdapter

    pipe = wan21.pipeline
    adapter = WanAdapter(wan21, pipe.transformer)
    g = torch.Generator().manual_seed(0)
    x, ctx, t = (
        torch.randn(2, 16, 2, 6, 5, generator=g),
        torch.randn(2, 12, 128, generator=g),
        torch.tensor([700.0, 80.0]),
    )
    with torch.inference_mode():  # as ComfyUI calls it
        out = adapter(x, t, ctx)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 0, 0, 0), mode="circular")  # W 5 -> 6 (patch 1x2x2), as ComfyUI pads
    with diffusers_context():
        expected = pipe.transformer(hidden_states=padded, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    assert out.shape == x.shape
    assert torch.equal(out, expected[..., :5])
    assert adapter.patch_embedding is pipe.transformer.patch_embedding  # read by WAN21.concat_cond
    with torch.inference_mode(), pytest.raises(RuntimeError, match="clip_fea"):
        adapter(x, t, ctx, clip_fea=torch.zeros(2, 257, 1280))


def test_a_wan21_pipeline_asked_for_the_second_expert_is_refused(wan21):
    from pipequant.nodes.messages import NodeInputError
    from pipequant.nodes.to_comfy import PipeQuantToComfy

    with pytest.raises(NodeInputError) as info:
        PipeQuantToComfy().convert(wan21, expert="second")
    text = info.value.render()
    assert "Pipeline to ComfyUI › expert" in text and "WanPipeline" in text and "transformer_2" in text
    assert "'first'" in text


def test_the_expert_input_is_optional_and_last(wan21):
    from pipequant.nodes.to_comfy import PipeQuantToComfy

    spec = PipeQuantToComfy.INPUT_TYPES()
    assert list(spec["required"]) == ["pipeline"]
    choices, options = spec["optional"]["expert"]
    assert choices == ["first", "second"] and options["default"] == "first"


def test_wan_conditioning_is_the_pipelines_umt5_states_padded_to_512(wan21):
    from pipequant.nodes.encode_prompt import PipeQuantEncodePrompt

    (cond,) = PipeQuantEncodePrompt().encode(wan21, "a red panda")
    states, extras = cond[0]
    with diffusers_context():
        ref, _ = wan21.pipeline.encode_prompt(
            "a red panda", do_classifier_free_guidance=False, max_sequence_length=512, device="cpu"
        )
    assert states.shape == (1, 512, 128) and extras == {"pooled_output": None}
    assert torch.equal(states, ref.float())
    used = int((states.abs().sum(-1) > 0).sum())  # the prompt's tokens + EOS; zeros after, as core's zero_out_masked
    assert 1 < used < 512 and not states[0, used:].any()


def test_hunyuan_video_adapter_scales_guidance_as_the_pipeline_does(models_root):
    from pipequant.nodes.bridge.hunyuan_video import HunyuanVideoAdapter

    result = load(ensure_family("HunyuanVideo", models_root), None, dtype="float32", device="cpu", cache=None)
    tr = result.pipeline.transformer
    adapter = HunyuanVideoAdapter(result, tr)
    g = torch.Generator().manual_seed(1)
    x, ctx, pooled = torch.randn(1, 16, 2, 4, 6, generator=g), torch.randn(1, 9, 32, generator=g), torch.randn(1, 32)
    t = torch.tensor([600.0])
    with torch.inference_mode():
        out = adapter(x, t, ctx, y=pooled, guidance=torch.tensor([4.5]))
        default = adapter(x, t, ctx, y=pooled)  # ComfyUI's 6.0 when no FluxGuidance sets it
    with diffusers_context():
        ones = torch.ones(1, 9, dtype=torch.bool)

        def call(guidance):
            return tr(x, t, ctx, ones, pooled, guidance=torch.tensor([guidance]), return_dict=False)[0]

        assert torch.equal(out, call(4500.0)) and torch.equal(default, call(6000.0))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="guiding_frame_index"):
        adapter(x, t, ctx, y=pooled, guiding_frame_index=torch.tensor([0.0]))


def test_image_to_video_5b_wan_and_hunyuan_i2v_are_not_mapped():
    from pipequant.resolver.run import family_of

    def pipe(**config):
        base = {"in_channels": 16, "out_channels": 16, "image_dim": None}
        transformer = type("WanTransformer3DModel", (), {"config": SimpleNamespace(**{**base, **config})})()
        return SimpleNamespace(transformer=transformer)

    assert family_of(pipe()) == "wan"
    assert family_of(pipe(in_channels=36, image_dim=1280)) is None  # Wan 2.1 I2V
    assert family_of(pipe(in_channels=48, out_channels=48)) is None  # Wan 2.2 TI2V 5B
    hunyuan = SimpleNamespace(
        transformer=type(
            "HunyuanVideoTransformer3DModel", (), {"config": SimpleNamespace(image_condition_type="token_replace")}
        )()
    )
    assert family_of(hunyuan) is None  # HunyuanVideo image to video


# -- in ComfyUI's python ----------------------------------------------------------------------------
@pytest.mark.comfyui
def test_bridged_wan_equals_diffusers(models_root, tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    run = subprocess.run(
        [
            str(comfyui_python(comfyui_dir())),
            str(Path(__file__).parent / "bridge_exactness_video.py"),
            str(models_root),
        ],
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
    wan21, wan22 = measured["wan21"], measured["wan22"]
    for m in (wan21, wan22["high"], wan22["low"]):
        assert m["denoiser_max_abs_error"] <= 2**-8 * m["output_scale"], measured
    assert wan21["conditioning_max_abs_error"] == 0.0 and wan22["conditioning_max_abs_error"] == 0.0
    assert wan21["conditioning_shape"] == [1, 512, 128] and wan21["pooled_output"] is None
    assert (wan21["model_type"], wan21["latent_format"], wan21["shift"]) == ("FLOW", "Wan21", 3.0)
    vae = wan21["vae"]
    assert vae["frames"] == 5 and vae["latent_shape"] == [1, 16, 2, 4, 4]
    assert vae["decode_max_abs_error"] <= 1e-6 and vae["encode_max_abs_error"] <= 1e-6, vae
    assert wan22["wraps"] == [True, True] and wan22["experts_differ"] and wan22["one_vae"]
    assert 0 < wan22["boundary_step_20"] < 20
    hv = measured["hunyuan_video"]
    assert hv["denoiser_max_abs_error"] <= 2**-8 * hv["output_scale"] and hv["conditioning_max_abs_error"] == 0.0, hv
    assert (hv["model_type"], hv["latent_format"], hv["shift"]) == ("FLOW", "HunyuanVideo", 7.0), hv
    assert hv["vae"]["decode_max_abs_error"] <= 1e-6 and hv["vae"]["encode_max_abs_error"] <= 1e-6, hv
    ltx = measured["ltx"]
    assert ltx["denoiser_max_abs_error"] <= 2**-8 * ltx["output_scale"], ltx
    assert ltx["conditioning_max_abs_error"] == 0.0 and ltx["mask_equal"], ltx
    assert (ltx["model_type"], ltx["latent_format"]) == ("FLUX", "LTXV"), ltx
    assert ltx["vae"]["decode_max_abs_error"] <= 1e-6 and ltx["vae"]["encode_max_abs_error"] <= 1e-6, ltx
    assert measured["wan22_memory"] == {
        "pack_entries_before": [1, 1],
        "owners_after_load": [1, 1, 1],
        "sizes_are_real_bytes": [True, True],
        "loaded_sizes_equal_sizes": [True, True],
        "owners_after_unload_all": [0, 0, 0],
    }, measured["wan22_memory"]


# -- in a real ComfyUI server -----------------------------------------------------------------------
def wan22_prompt(split: int = 1, steps: int = 2) -> dict:
    """Core's Wan 2.2 graph: expert 'first' samples steps 0..split with noise, 'second' the rest."""
    prompt = {
        "1": {
            "class_type": "PipeQuantBackend",
            "inputs": {
                "backend": "torchao",
                "quant_type": "int8_weight_only",
                "compute_dtype": "auto",
                "components": "transformer,transformer_2,text_encoder",
                "options": "{}",
            },
        },
        "2": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {
                "model": WAN22,
                "dtype": "bfloat16",
                "device": "cpu",
                "offload": "none",
                "quantization": ["1", 0],
            },
        },
        "3": {"class_type": "PipeQuantToComfy", "inputs": {"pipeline": ["2", 0], "expert": "first"}},
        "4": {"class_type": "PipeQuantToComfy", "inputs": {"pipeline": ["2", 0], "expert": "second"}},
        "5": {"class_type": "PipeQuantEncodePrompt", "inputs": {"pipeline": ["2", 0], "text": "a red panda"}},
        "6": {"class_type": "PipeQuantEncodePrompt", "inputs": {"pipeline": ["2", 0], "text": "blurry"}},
        "7": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1},
        },
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["4", 1]}},
        "11": {"class_type": "CreateVideo", "inputs": {"images": ["10", 0], "fps": 16.0}},
        "12": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["11", 0], "filename_prefix": "pq-wan22", "format": "auto", "codec": "auto"},
        },
    }
    common = {"noise_seed": 3, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple"}
    prompt["8"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **common,
            "model": ["3", 0],
            "add_noise": "enable",
            "positive": ["5", 0],
            "negative": ["6", 0],
            "latent_image": ["7", 0],
            "start_at_step": 0,
            "end_at_step": split,
            "return_with_leftover_noise": "enable",
        },
    }
    prompt["9"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **common,
            "model": ["4", 0],
            "add_noise": "disable",
            "positive": ["5", 0],
            "negative": ["6", 0],
            "latent_image": ["8", 0],
            "start_at_step": split,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
    }
    return prompt


@pytest.fixture(scope="module")
def wan_server(comfy_server, models_root):  # noqa: F811
    for name, family in ((WAN22, "Wan 2.2 A14B"), (HUNYUAN, "HunyuanVideo"), (LTX, "LTX-Video")):
        target = comfy_server.models_root / name
        if not target.exists():
            shutil.copytree(ensure_family(family, models_root), target)
    return comfy_server


@pytest.mark.comfyui
def test_wan22_experts_into_two_ksampler_advanced_save_a_video(wan_server):
    server = wan_server
    start = len(server.log())
    entry = _run_ok(server, wan22_prompt())
    (saved,) = entry["outputs"]["12"]["images"]
    path = server.output_dir / saved["subfolder"] / saved["filename"]
    assert path.is_file() and path.stat().st_size > 0, saved
    assert video_size(path) == [5, 32, 32]
    log = server.log()[start:]
    assert "Traceback" not in log and "!!! Exception" not in log, log[-4000:]
    assert "switches experts at sigma 0.875" in log, log[-4000:]


@pytest.mark.comfyui
def test_wan21_asked_for_the_second_expert_stops_naming_the_input(wan_server):
    prompt = wan22_prompt()
    prompt["2"]["inputs"]["model"] = "Wan2.1-T2V-1.3B-Diffusers"
    prompt["1"]["inputs"]["components"] = "transformer,text_encoder"
    entry = wan_server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "error"
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert error["node_type"] == "PipeQuantToComfy" and error["node_id"] == "4"
    assert "expert" in error["exception_message"] and "transformer_2" in error["exception_message"]


def one_model_prompt(model: str, guidance: str) -> dict:
    """Load -> Pipeline to ComfyUI (no expert input: a workflow saved before it existed) -> KSampler
    -> VAEDecode -> SaveAnimatedWEBP; `guidance` is the core node applied to the positive prompt."""
    prompt = wan22_prompt()
    for key in ("4", "8", "11", "12"):
        del prompt[key]
    prompt["1"]["inputs"]["components"] = "transformer,text_encoder"
    prompt["2"]["inputs"]["model"] = model
    del prompt["3"]["inputs"]["expert"]
    if guidance == "FluxGuidance":
        prompt["13"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": 6.0}}
        positive, negative = ["13", 0], ["6", 0]
    else:
        prompt["13"] = {
            "class_type": "LTXVConditioning",
            "inputs": {"positive": ["5", 0], "negative": ["6", 0], "frame_rate": 24.0},
        }
        positive, negative = ["13", 0], ["13", 1]
    prompt["9"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["3", 0],
            "seed": 4,
            "steps": 2,
            "cfg": 1.0 if guidance == "FluxGuidance" else 3.0,
            "sampler_name": "euler",
            "scheduler": "simple",
            "positive": positive,
            "negative": negative,
            "latent_image": ["7", 0],
            "denoise": 1.0,
        },
    }
    prompt["10"]["inputs"]["vae"] = ["3", 1]
    prompt["14"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["10", 0],
            "filename_prefix": f"pq-{model}",
            "fps": 8.0,
            "lossless": False,
            "quality": 80,
            "method": "default",
        },
    }
    return prompt


@pytest.mark.comfyui
@pytest.mark.parametrize(
    "model,guidance,size", [(HUNYUAN, "FluxGuidance", 32), (LTX, "LTXVConditioning", 16)], ids=["hunyuan", "ltx"]
)
def test_one_model_video_family_into_ksampler_saves_an_animated_webp(wan_server, model, guidance, size):
    """size: the tiny LTX VAE compresses 4x (EmptyHunyuanLatentVideo assumes 8x)."""
    from PIL import Image

    server = wan_server
    start = len(server.log())
    entry = _run_ok(server, one_model_prompt(model, guidance))
    (saved,) = entry["outputs"]["14"]["images"]
    with Image.open(server.output_dir / saved["subfolder"] / saved["filename"]) as video:
        assert (video.n_frames, video.size) == (5, (size, size))
    log = server.log()[start:]
    assert "Traceback" not in log and "!!! Exception" not in log, log[-4000:]


def test_every_mapped_family_has_an_adapter_and_a_title():
    """The registries the families add themselves to agree: a denoiser class the bridge maps has
    an adapter and a title (the names the refusal lists)."""
    from pipequant.nodes.bridge import ADAPTERS
    from pipequant.resolver.run.encode import FAMILY_OF_DENOISER, FAMILY_TITLES

    families = set(FAMILY_OF_DENOISER.values()) | {"sdxl"}  # sdxl: a UNet with text_time embeddings
    assert families <= set(ADAPTERS) and families == set(FAMILY_TITLES)
    assert {"wan", "hunyuan_video", "ltx"} <= families
