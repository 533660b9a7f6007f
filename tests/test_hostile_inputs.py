"""Bad inputs at the Sampler, the planner command and the plan route (issue 22, item 12): each a
specific error on the input at fault, before any work; never a crash, never a silent black image."""

from __future__ import annotations

import pytest
import torch

from pipequant.resolver.keep.load import load
from pipequant.resolver.problems import ValidationError
from pipequant.resolver.run.sample import generate
from pipequant.runner.cli import main

SAMPLE = dict(prompt="a cat", steps=2, width=32, height=32, max_sequence_length=32, seed=3)


@pytest.fixture(scope="module")
def flux(tiny_flux):
    return load(tiny_flux, None, dtype="float32", device="cpu", cache=None)


def _nan(shape):
    t = torch.rand(*shape)
    t.view(-1)[0] = float("nan")
    return t


@pytest.mark.parametrize(
    "image,mask,code,field",
    [
        (torch.rand(1, 0, 0, 3), None, "image_empty", "image"),
        (torch.rand(1, 32, 0, 3), None, "image_empty", "image"),
        (torch.rand(0, 32, 32, 3), None, "image_empty", "image"),
        (torch.rand(1, 32, 32, 3), torch.rand(1, 0, 0), "mask_empty", "mask"),
        (torch.rand(1, 32, 32, 3), torch.rand(0, 0), "mask_empty", "mask"),
        (_nan((1, 32, 32, 3)), None, "image_nonfinite", "image"),
        (torch.full((1, 32, 32, 3), float("inf")), None, "image_nonfinite", "image"),
        (torch.rand(1, 32, 32, 3), _nan((1, 32, 32)), "mask_nonfinite", "mask"),
    ],
)
def test_empty_or_nan_images_and_masks_are_refused_at_their_input(flux, image, mask, code, field):
    with pytest.raises(ValidationError) as info:
        generate(flux.pipeline, image=image, mask=mask, denoise=0.5, **SAMPLE)
    assert info.value.codes == [code] and info.value.problems[0].input == field


def test_a_pipeline_that_computes_nan_says_so_instead_of_a_black_image(tiny_flux):
    broken = load(tiny_flux, None, dtype="float32", device="cpu", cache=None)
    with torch.no_grad():
        broken.pipeline.transformer.proj_out.weight.fill_(float("nan"))
    with pytest.raises(ValidationError) as info:
        generate(broken.pipeline, **SAMPLE)
    assert info.value.codes == ["image_nonfinite"] and "float32" in str(info.value)


@pytest.mark.parametrize(
    "profile,words",
    [
        ("[" * 100_000 + "]" * 100_000, "levels deep"),
        ('{"name": "x", "total_gb": 1' + "0" * 400 + "}", "must be numbers"),
        ('{"name": "x", "total_gb": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"name": "x", "total_gb": true}', "not true/false"),
        ('{"name": "x", "total_gb": 24, "compute_capability": [true, false]}', "compute_capability"),
        ("{not json", "not valid JSON"),
    ],
    ids=["nested", "400-digits", "5000-digits", "bool", "bool-cc", "not-json"],
)
def test_plan_device_profile_never_crashes(profile, words, monkeypatch, models_root, tiny_flux, capsys):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    code = main(["plan", "tiny-flux", "--device-profile", profile])
    err = capsys.readouterr().err
    assert code == 2 and "device" in err and words in err, err[-400:]


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], "no"])
def test_plan_route_takes_allow_offload_only_as_a_boolean(value, monkeypatch, models_root, tiny_flux):
    from pipequant.nodes import routes

    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    result = routes.auto_plan({"model": "tiny-flux", "allow_offload": value, "width": 64, "height": 64})
    assert result["ok"] is False
    assert [p["code"] for p in result["problems"]] == ["allow_offload_invalid"]


def test_plan_route_takes_a_real_boolean(monkeypatch, models_root, tiny_flux):
    from pipequant.nodes import routes

    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    assert routes.auto_plan({"model": "tiny-flux", "allow_offload": False, "width": 64, "height": 64})["ok"]
