"""Pipeline to ComfyUI + Encode Prompt with Pipeline for Qwen-Image, Lumina 2, Z-Image and HiDream-I1.

- Without ComfyUI: each family's adapter, called as ComfyUI calls its diffusion_model, returns
  what the pipeline's own transformer call gives (float32), and the encoded prompt has core's
  layout (tests/bridge_exactness.py holds the pipelines' reference calls).
- With COMFYUI_DIR (ComfyUI's python): one call through the bridged MODEL's apply_model, from the
  node's CONDITIONING through core's extra_conds, equals the diffusers call within bf16 rounding
  (torchao int8 transformers), the CONDITIONING equals encode_prompt, the VAE decodes as diffusers.
- In a real ComfyUI server (CPU): Load -> Pipeline to ComfyUI -> KSampler -> VAEDecode -> SaveImage
  for tiny Qwen-Image, Lumina 2, Z-Image and HiDream, Qwen-Image image-to-image through VAEEncode,
  no traceback in the log (the SDXL template
  runs in tests/test_comfyui_integration.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from bridge_exactness import IMAGE_CASES
from comfy_server import comfy_server, comfyui_dir, comfyui_python, skip_reason  # noqa: F401  (a fixture)
from test_comfyui_bridge import _comfy_env, _image_of, _run_ok, bridge_prompt

from pipequant.resolver.keep.load import load
from pipequant.testing.families import ensure_family, folder_name


# -- without ComfyUI ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(IMAGE_CASES))
def test_adapter_and_encoding_equal_the_pipelines_own_calls(key, models_root):
    from pipequant.nodes.bridge.adapters import ADAPTERS
    from pipequant.resolver.run.encode import encode_prompt, family_of

    name, shape, reference, node_kwargs = IMAGE_CASES[key]
    result = load(ensure_family(name, models_root), None, dtype="float32", device="cpu", cache=None)
    pipe = result.pipeline
    assert family_of(pipe) == key
    encoded = encode_prompt(pipe, "a lighthouse at dusk", **node_kwargs)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.6])
    expected, ref_cond = reference(pipe, x, sigma)
    extras = dict(encoded.extras)
    kwargs = {}
    if key == "hidream":  # what core's HiDream model hands its network: y, context, the Llama layers
        kwargs = {"y": extras["pooled_output"], "encoder_hidden_states_llama3": extras["conditioning_llama3"]}
        t5, pooled, llama = ref_cond
        assert torch.equal(extras["pooled_output"], pooled.float()) and torch.equal(
            extras["conditioning_llama3"], llama.float()
        )
        ref_cond = t5
    elif "attention_mask" in extras:  # Lumina 2 / Z-Image: core's extra_conds turns it into num_tokens
        assert bool(extras["attention_mask"].all()) and extras["attention_mask"].shape == encoded.states.shape[:2]
        kwargs = {"num_tokens": encoded.states.shape[1]}
    assert torch.equal(encoded.states, ref_cond.float())
    adapter = ADAPTERS[key](None, pipe.transformer)
    with torch.inference_mode():  # as ComfyUI calls it
        out = adapter(x, sigma if key != "hidream" else sigma * 1000, context=encoded.states, **kwargs)
    assert out.shape == x.shape
    assert (out.float() - expected).abs().max() < 1e-4


def test_unmapped_qwen_edit_pipeline_is_not_a_qwen_image_family():
    from pipequant.resolver.run.encode import family_of

    class QwenImageEditPipeline:  # encodes its prompt with the input image
        transformer = type("QwenImageTransformer2DModel", (torch.nn.Module,), {})()

    assert family_of(QwenImageEditPipeline()) is None


# -- in ComfyUI's python ----------------------------------------------------------------------------
@pytest.mark.comfyui
def test_bridged_image_families_equal_diffusers(models_root, tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    run = subprocess.run(
        [str(comfyui_python(comfyui_dir())), str(Path(__file__).parent / "bridge_exactness.py"), str(models_root)]
        + sorted(IMAGE_CASES)
        + ["sdxl_small_time_embedding"],
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
    # The SDXL template's tiny UNet embeds size conditions in 16 sinusoids (core's SDXL: 256).
    sdxl = measured.pop("sdxl_small_time_embedding")
    assert sdxl["denoiser_max_abs_error"] == 0.0 and sdxl["conditioning_max_abs_error"] == 0.0, sdxl
    assert set(measured) == set(IMAGE_CASES)
    for family, m in measured.items():
        # Within bf16 rounding of the output (Lumina 2: the padded and the unpadded prompt differ
        # by rounding only; 4e-7 in float32).
        assert m["denoiser_max_abs_error"] <= 2**-8 * m["output_scale"], (family, m)
        assert m["conditioning_max_abs_error"] == 0.0, (family, m)
        assert m["vae_decode_max_abs_error"] < 1e-4, (family, m)
    assert measured["qwen_image"]["model_type"] == "FLUX" and measured["qwen_image"]["vae_encode_shape"] == [
        1,
        16,
        1,
        4,
        4,
    ]
    assert measured["z_image"]["shift"] == 3.0  # core's ZImage (or its equivalent on 0.3.64)
    assert measured["hidream"]["shift"] == 3.0  # the pipeline scheduler's
    assert measured["hidream"]["conditioning_keys"] == ["conditioning_llama3", "pooled_output"]


# -- in a real ComfyUI server -----------------------------------------------------------------------
# family key -> (testing/families.py name, the tiny VAE's scale factor)
SERVER_FAMILIES = {
    "qwen_image": ("Qwen-Image", 8),
    "lumina2": ("Lumina 2", 8),
    "z_image": ("Z-Image Turbo", 2),
    "hidream": ("HiDream-I1", 8),
}
LATENT = 64  # EmptySD3LatentImage's width/height: an 8 x 8 latent


@pytest.fixture(scope="module")
def image_server(comfy_server, models_root):  # noqa: F811
    for name, _scale in SERVER_FAMILIES.values():
        target = comfy_server.models_root / folder_name(name)
        if not target.exists():
            shutil.copytree(ensure_family(name, models_root), target)
    return comfy_server


@pytest.mark.comfyui
def test_core_ksampler_runs_the_bridged_image_families(image_server):
    from PIL import Image

    server = image_server
    start = len(server.log())
    for key, (name, scale) in SERVER_FAMILIES.items():
        prompt = bridge_prompt(folder_name(name), key)
        prompt["6"]["inputs"].update(width=LATENT, height=LATENT)
        for node in ("4", "5"):
            prompt[node]["inputs"]["max_sequence_length"] = 32
        path = _image_of(server, _run_ok(server, prompt))
        assert Image.open(path).size == (LATENT // 8 * scale,) * 2, key
    # Image-to-image through core on Qwen-Image's 3-D VAE: VAEEncode of a 4-D image, half denoise.
    prompt = bridge_prompt(folder_name("Qwen-Image"), "qwen_image", seed=2)
    for node in ("4", "5"):
        prompt[node]["inputs"]["max_sequence_length"] = 32
    prompt["10"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 8421504},
    }
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["3", 1]}}
    prompt["7"]["inputs"].update(latent_image=["11", 0], denoise=0.5)
    assert Image.open(_image_of(server, _run_ok(server, prompt))).size == (64, 64)
    log = server.log()[start:]
    assert "Traceback" not in log and "!!! Exception" not in log, log[-4000:]
    assert "model_type FLUX" in log and "model_type FLOW" in log
