"""diffusers weight variants (model.fp16.safetensors): the Load node's `variant` picks the files
that inspection, the estimate and the load all read."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.resolver import ComponentCache, ValidationError, plan_load
from pipequant.resolver.decide.estimate import estimate
from pipequant.resolver.files.inspect_model import inspect_model
from pipequant.resolver.files.variant import choices, variant_of
from pipequant.resolver.keep import load


@pytest.fixture
def with_fp16(tmp_path, tiny_flux):
    """tiny-flux plus an fp16 variant of the transformer whose weights are all zero (so a test can
    tell which file was read)."""
    folder = tmp_path / "tiny-flux-variants"
    shutil.copytree(tiny_flux, folder)
    plain = next((folder / "transformer").glob("diffusion_pytorch_model*.safetensors"))
    zeros = {k: torch.zeros_like(v, dtype=torch.float16) for k, v in load_file(plain).items()}
    save_file(zeros, folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors", metadata={"format": "pt"})
    return folder


def test_variant_names():
    assert variant_of("model.fp16.safetensors") == "fp16"
    assert variant_of("diffusion_pytorch_model-00001-of-00002.bf16.safetensors") == "bf16"
    assert variant_of("diffusion_pytorch_model.safetensors") is None
    assert variant_of("model.safetensors.index.json") is None


def test_inspection_and_estimate_follow_the_variant(with_fp16):
    plain, fp16 = inspect_model(with_fp16), inspect_model(with_fp16, variant="fp16")
    assert plain.components["transformer"].variant is None
    assert fp16.components["transformer"].variant == "fp16"
    assert set(fp16.components["transformer"].bytes_by_dtype) == {"F16"}
    assert fp16.components["vae"].variant is None  # no fp16 files: its plain ones
    assert choices([with_fp16]) == ["default", "fp16"]
    # before-bytes are counted at the load dtype, so the plan's size is the same; the files differ
    before = estimate(plan_load(with_fp16, None, dtype="float32", device="cpu"))
    after = estimate(plan_load(with_fp16, None, dtype="float32", device="cpu", variant="fp16"))
    same = {k: v for k, v in before["total"].items() if k != "bytes_read"}  # bytes_read follows the files
    assert same == {k: v for k, v in after["total"].items() if k != "bytes_read"}


def test_the_load_reads_the_variant_files(with_fp16):
    with torch.inference_mode():
        fp16 = load(with_fp16, None, device="cpu", dtype="float32", variant="fp16", cache=ComponentCache())
        plain = load(with_fp16, None, device="cpu", dtype="float32", cache=ComponentCache())
    weights = [p.detach() for p in fp16.pipeline.transformer.parameters()]
    assert all(float(p.abs().sum()) == 0.0 for p in weights), "the fp16 (all-zero) file was not the one read"
    assert any(float(p.detach().abs().sum()) > 0 for p in plain.pipeline.transformer.parameters())
    assert fp16.plan.variant == "fp16" and plain.plan.variant is None


def test_the_same_component_in_two_variants_is_two_cache_entries(with_fp16):
    cache = ComponentCache()
    with torch.inference_mode():
        a = load(with_fp16, None, device="cpu", variant="fp16", cache=cache)
        b = load(with_fp16, None, device="cpu", cache=cache)
    assert a.pipeline.transformer is not b.pipeline.transformer
    assert a.pipeline.vae is b.pipeline.vae  # no variant files: the same plain component


def test_a_missing_variant_is_a_clear_error_before_any_weight_is_read(with_fp16, monkeypatch):
    with pytest.raises(ValidationError) as exc:
        plan_load(with_fp16, None, device="cpu", variant="bf16")
    assert exc.value.codes == ["variant_missing"]
    assert 'has no "bf16" weight files' in str(exc.value) and "it has: default, fp16" in str(exc.value)

    monkeypatch.setenv("PIPEQUANT_MODELS", str(with_fp16.parent))
    assert PipeQuantLoadPipeline.INPUT_TYPES()["optional"]["variant"][0] == ["default", "fp16"]
    result = PipeQuantLoadPipeline.check(with_fp16.name, "bfloat16", "cpu", "none", variant="bf16")
    assert result is not True and "variant" in result and "bf16" in result
    assert PipeQuantLoadPipeline.check(with_fp16.name, "bfloat16", "cpu", "none", variant="fp16") is True


def test_the_auto_plan_reads_the_same_variant_as_the_load(with_fp16, monkeypatch):
    from pipequant.resolver.decide.planner.device import GIB, DeviceProfile
    from pipequant.resolver.decide.planner.request import plan_for

    gpu = DeviceProfile("test GPU", 80 * GIB, 80 * GIB, (9, 0))
    plain, fp16 = (
        plan_for(with_fp16, budget_gb=1, profile=gpu),
        plan_for(with_fp16, budget_gb=1, profile=gpu, variant="fp16"),
    )
    assert plain.model.components["transformer"].variant is None and plain.to_json()["variant"] is None
    assert fp16.model.components["transformer"].variant == "fp16" and fp16.to_json()["variant"] == "fp16"
    assert "weights from the fp16 files" in fp16.table() and "weights from" not in plain.table()
    with pytest.raises(ValidationError) as err:
        plan_for(with_fp16, budget_gb=1, profile=gpu, variant="bf16")
    assert err.value.problems[0].field == "variant" and "fp16" in err.value.problems[0].suggestion
