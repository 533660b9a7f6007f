"""Every family ComfyUI users run, as the hub ships it (tiny, CPU), through the public surfaces:
listed, validated, estimated within 2 % of the Memory Report's bytes, loaded with torchao int8 on
its denoiser(s) and largest text encoder, sampled (a video's frames as one IMAGE batch), and
auto-planned into a budget that forces quantization."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from helpers import count_storage_bytes, quantized_weight_types

from pipequant.resolver import BackendSpec, ComponentCache
from pipequant.resolver.decide.estimate import estimate
from pipequant.resolver.decide.limits import frame_problems, is_video
from pipequant.resolver.decide.planner import GIB, DeviceProfile, auto_plan
from pipequant.resolver.decide.planner.candidates import DENOISER
from pipequant.resolver.decide.prepare import prepare
from pipequant.resolver.files.roots import list_pipelines
from pipequant.resolver.keep.load import load_plan
from pipequant.resolver.run.blocks import repeated_blocks
from pipequant.resolver.run.sample import generate
from pipequant.testing.families import FAMILIES, ensure_family, folder_name

STEPS = 2
# Why FLUX.2 [dev] skips outside ComfyUI's venv, and how to run it there (README families table).
TORCHVISION_SKIP = (
    "FLUX.2 [dev]'s PixtralProcessor imports torchvision, which does not import here ({why}). The local "
    "package source has no CPU torchvision for torch 2.13.0; its only build, 0.28.0, is a CUDA build that "
    "fails to import against CPU torch (libtorch_cuda.so missing), so it is not installed. The README's test "
    "command runs this test next, in a side venv with torch 2.14.1 + torchvision 0.29.1: "
    "bash tests/torchvision_family.sh"
)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_end_to_end(name, families_root):
    family = FAMILIES[name]
    missing = family.missing()
    if missing.keys() == {"torchvision"}:
        if os.environ.get("PIPEQUANT_NEEDS_TORCHVISION"):  # tests/torchvision_family.sh: must run
            pytest.fail(f"{name} needs torchvision, which does not import here ({missing['torchvision']})")
        pytest.skip(TORCHVISION_SKIP.format(why=missing["torchvision"]))
    if missing:
        pytest.skip(f"{name}'s own classes cannot import {missing} (ComfyUI installs have them)")
    folder = ensure_family(name, families_root)
    roots = [families_root]
    # listed, and valid as it is
    assert folder_name(name) in list_pipelines(roots)
    assert prepare(folder.name, roots=roots, device="cpu", plan=False).problems == []
    quantized = [*family.denoisers, family.text_encoder]
    spec = BackendSpec.make("torchao", "int8_weight_only", components=quantized)
    plan = prepare(folder.name, spec, roots=roots, device="cpu").plan_or_raise()
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

    for component in family.denoisers:  # Cancel reaches every expert (Wan 2.2's transformer_2 too)
        blocks = repeated_blocks(getattr(pipe, component))
        assert blocks and all(b.__dict__.get("_pipequant_interrupt_hook") for b in blocks), component
    real = {r["component"]: r["bytes"] for r in result.rows if r.get("bytes")}
    for component, value in real.items():
        assert predicted[component] == pytest.approx(value, rel=0.02), component
        # the pipeline holds the very modules that were loaded (Wan's optional transformers were
        # once reloaded from disk, unquantized, behind the report's back)
        assert count_storage_bytes(getattr(pipe, component)) == value, component

    model = plan.model
    cpu = DeviceProfile("cpu", 16 * GIB, 16 * GIB, None)
    everything = auto_plan(model, cpu, 16 * GIB, "quality", width=family.size, height=family.size)
    assert [n for n, r in everything.roles.items() if r == DENOISER] == list(family.denoisers)
    main = family.denoisers[0]
    budget = int(everything.peak.total - everything.choices[main].bytes * 0.3)
    tight = auto_plan(model, cpu, budget, "quality", width=family.size, height=family.size)
    assert tight.peak.total <= budget
    assert any(c.backend is not None for c in tight.choices.values())


def test_video_working_memory_grows_with_latent_frames():
    """Wan 2.1 14B at 832x480: 81 frames are 21 latent frames of 1 560 tokens each."""
    from pipequant.resolver.decide.planner.working import working_memory

    one = working_memory("WanPipeline", 832, 480, 1, None, None, num_frames=1)
    video = working_memory("WanPipeline", 832, 480, 1, None, None, num_frames=81)
    assert video.denoiser / GIB == pytest.approx(7.6, abs=0.2)
    assert one.denoiser / GIB < 0.6
    assert video.vae_decode == 81 * one.vae_decode
    assert "Wan2.1-T2V-14B" in video.source
    image = working_memory("FluxPipeline", 1024, 1024, 1, None, None, num_frames=81)
    assert image == working_memory("FluxPipeline", 1024, 1024, 1, None, None)  # frames mean nothing to an image


def test_sizes_and_frames_are_checked_from_the_config(families_root):
    from pipequant.resolver.decide.limits import image_size_problems, latent_frames, max_image_side
    from pipequant.resolver.files.inspect_model import inspect_model

    aura = inspect_model(ensure_family("AuraFlow", families_root))
    # 256 positions: a 16 x 16 square of 2x2 patches over a 1x VAE, so 32 pixels a side
    assert max_image_side(aura) == 32
    (problem,) = image_size_problems(aura, 32, 48)
    assert problem.field == "height" and "use height 32 or less" in problem.suggestion
    wan = inspect_model(ensure_family("Wan 2.1", families_root))
    # an 8x VAE (its config says so) and 2x2 patches: multiples of 16
    (problem,) = image_size_problems(wan, 40, 32)
    assert (problem.field, problem.suggestion) == ("width", "use width 32 or 48")
    assert latent_frames(wan, 81) == 21
    (problem,) = frame_problems(wan, 32)
    assert "4k+1" in problem.message and problem.suggestion == "use 29 or 33"
    ltx = inspect_model(ensure_family("LTX-Video", families_root))
    assert [p.suggestion for p in frame_problems(ltx, 12)] == ["use 9 or 13"]  # this tiny VAE folds 4


def _loaded(name, root):
    folder = ensure_family(name, root)
    with torch.inference_mode():
        return load_plan(prepare(folder.name, None, roots=[root], device="cpu").plan_or_raise(), cache=None)


def test_the_sampler_renders_frames_as_one_image_batch_and_checks_the_frame_rule_first(families_root):
    from pipequant.nodes import NODE_CLASS_MAPPINGS
    from pipequant.nodes.messages import NodeInputError

    sampler = NODE_CLASS_MAPPINGS["PipeQuantSampler"]
    assert list(sampler.INPUT_TYPES()["optional"])[-2:] == ["num_frames", "fps"]  # last: saved workflows load
    wan = _loaded("Wan 2.1", families_root)
    calls = []
    original = type(wan.pipeline).__call__

    @functools.wraps(original)  # the same signature: generate() passes what __call__ takes
    def counted(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(type(wan.pipeline), "__call__", counted)
        with pytest.raises(NodeInputError, match=r"num_frames.*4k\+1") as err:
            sampler().sample(wan, "a cat", "", 2, 5.0, 32, 32, 0, 1, 16, num_frames=6)
        assert "use 5 or 9" in str(err.value) and calls == []
        with torch.inference_mode():
            (frames,) = sampler().sample(wan, "a cat", "", 2, 5.0, 32, 32, 0, 2, 16, num_frames=5)
        with pytest.raises(NodeInputError, match="cannot start a video from an image"):
            sampler().sample(wan, "a cat", "", 2, 5.0, 32, 32, 0, 1, 16, image=torch.rand(1, 32, 32, 3), num_frames=5)
    assert frames.shape == (2 * 5, 32, 32, 3)  # batch x frames, as CreateVideo / SaveAnimatedWEBP take
    assert len(calls) == 1 and calls[0]["num_frames"] == 5


def test_image_to_video_through_the_image_input(families_root):
    """LTX text-to-video starts from the image through its image-to-video pipeline (same modules)."""
    from pipequant.nodes import NODE_CLASS_MAPPINGS

    ltx = _loaded("LTX-Video", families_root)
    start = torch.rand(1, 32, 32, 3)
    with torch.inference_mode():
        (frames,) = NODE_CLASS_MAPPINGS["PipeQuantSampler"]().sample(
            ltx, "a cat", "", 2, 3.0, 32, 32, 0, 1, 16, image=start, num_frames=9, fps=24.0
        )
    assert frames.shape == (9, 32, 32, 3) and torch.isfinite(frames).all()
    z_image = _loaded("Z-Image Turbo", families_root)  # an image pipeline ignores num_frames
    with torch.inference_mode():
        (image,) = NODE_CLASS_MAPPINGS["PipeQuantSampler"]().sample(
            z_image, "a cat", "", 2, 0.0, 32, 32, 0, 1, 16, num_frames=33
        )
    assert image.shape == (1, 32, 32, 3)


def test_the_auto_plan_node_plans_a_video_for_its_frames(families_root):
    from pipequant.resolver.decide.planner.request import plan_for
    from pipequant.resolver.problems import ValidationError

    folder = ensure_family("Wan 2.1", families_root)
    cpu = DeviceProfile("cpu", 16 * GIB, 16 * GIB, None)
    short = plan_for(folder, budget_gb=16, width=64, height=64, profile=cpu, num_frames=1)
    long = plan_for(folder, budget_gb=16, width=64, height=64, profile=cpu, num_frames=81)
    assert long.working.denoiser > short.working.denoiser  # 21 latent frames against 1 (+ 512 text tokens)
    assert long.working.vae_decode == 81 * short.working.vae_decode
    with pytest.raises(ValidationError) as err:
        plan_for(folder, budget_gb=16, width=64, height=64, profile=cpu, num_frames=80)
    assert [p.field for p in err.value.problems] == ["num_frames"]
    for bad in ("33", 0, 10**9, True):  # what the HTTP route may be sent
        with pytest.raises(ValidationError, match="not a frame count"):
            plan_for(folder, budget_gb=16, width=64, height=64, profile=cpu, num_frames=bad)


def test_both_experts_are_wrapped_for_compile(families_root):
    """Wan 2.2 A14B's transformer_2 runs every low-noise step: compile reaches it as the first expert."""
    from pipequant.resolver.run.compile import compile_state

    folder = ensure_family("Wan 2.2 A14B", families_root)
    plan = prepare(folder.name, None, roots=[families_root], device="cpu", compile="regional").plan_or_raise()
    with torch.inference_mode():
        result = load_plan(plan, cache=None, compile="regional")
    states = [compile_state(getattr(result.pipeline, n)) for n in ("transformer", "transformer_2")]
    assert all(s is not None and s.modules for s in states)
    assert result.compiled is states[0] and result.compiled_more == (states[1],)
