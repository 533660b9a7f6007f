"""Every family ComfyUI users run, as the hub ships it (tiny, CPU), through the public surfaces:
listed, validated, estimated within 2 % of the Memory Report's bytes, loaded with torchao int8 on
its denoiser(s) and largest text encoder, sampled (a video's frames as one IMAGE batch), and
auto-planned into a budget that forces quantization."""

from __future__ import annotations

import pytest
import torch
from helpers import quantized_weight_types

from pipequant.resolver import BackendSpec, ComponentCache
from pipequant.resolver.decide.estimate import estimate
from pipequant.resolver.decide.limits import frame_problems, is_video
from pipequant.resolver.decide.planner import GIB, DeviceProfile, auto_plan
from pipequant.resolver.decide.planner.candidates import DENOISER
from pipequant.resolver.files.roots import list_pipelines
from pipequant.resolver.keep.load import load_plan
from pipequant.resolver.keep.pipeline import check_model, plan_named
from pipequant.resolver.run.sample import generate
from pipequant.testing.families import FAMILIES, ensure_family, folder_name

STEPS = 2


@pytest.fixture(scope="session")
def families_root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_end_to_end(name, families_root):
    family = FAMILIES[name]
    folder = ensure_family(name, families_root)
    roots = [families_root]
    # listed, and valid as it is
    assert folder_name(name) in list_pipelines(roots)
    assert check_model(folder.name, roots, device="cpu") == []
    quantized = [*family.denoisers, family.text_encoder]
    spec = BackendSpec.make("torchao", "int8_weight_only", components=quantized)
    plan = plan_named(folder.name, spec, roots=roots, device="cpu")
    assert plan.model.pipeline_class == family.pipeline_class
    assert is_video(plan.model) == family.is_video
    if family.is_video:
        assert frame_problems(plan.model, family.num_frames) == []
        assert [p.field for p in frame_problems(plan.model, family.num_frames + 1)] == ["num_frames"]
    predicted = {r["component"]: r["bytes_after"] for r in estimate(plan)["components"]}

    with torch.inference_mode():
        result = load_plan(plan, cache=ComponentCache())
        pipe = result.pipeline
        for component in quantized:
            assert quantized_weight_types(getattr(pipe, component)) == {"torchao.Int8Tensor"} or all(
                t.startswith("torchao") for t in quantized_weight_types(getattr(pipe, component))
            ), component
        images = generate(
            pipe,
            prompt="a cat",
            negative_prompt="blurry",
            steps=STEPS,
            width=family.size,
            height=family.size,
            seed=0,
            num_frames=family.num_frames if family.is_video else 0,
            **family.sample,
        )
    assert images.shape == (family.num_frames, family.size, family.size, 3)
    assert torch.isfinite(images).all() and images.std() > 0

    real = {r["component"]: r["bytes"] for r in result.rows if r.get("bytes")}
    for component, value in real.items():
        assert predicted[component] == pytest.approx(value, rel=0.02), component

    model = plan.model
    cpu = DeviceProfile("cpu", 16 * GIB, 16 * GIB, None)
    everything = auto_plan(model, cpu, 16 * GIB, "quality", width=family.size, height=family.size)
    assert [n for n, r in everything.roles.items() if r == DENOISER] == list(family.denoisers)
    main = family.denoisers[0]
    budget = int(everything.peak.total - everything.choices[main].bytes * 0.3)
    tight = auto_plan(model, cpu, budget, "quality", width=family.size, height=family.size)
    assert tight.peak.total <= budget
    assert any(c.backend is not None for c in tight.choices.values())
