"""Slow-plan warnings: a denoiser plan measured below 0.9x bf16 is flagged (never blocked), with the
fastest measured plan of no more memory that runs on the same device; and the fp8 fast path."""

from __future__ import annotations

import json

import pytest
import torch

from pipequant.resolver import BackendSpec, ComponentMap, plan_load
from pipequant.resolver.decide import validate
from pipequant.resolver.decide.slow_plan import slow_plan_warnings
from pipequant.resolver.files import inspect_model
from pipequant.resolver.keep import load
from pipequant.resolver.known import catalogue, devices
from pipequant.runner.cli import EXAMPLES, main

G = BackendSpec.make


def warnings(problems):
    return [p for p in problems if p.code == "slow_plan"]


def test_a_slow_plan_on_cpu_warns_and_names_the_faster_plan_of_the_same_size(tiny_flux):
    model = inspect_model(tiny_flux)
    found = warnings(validate(G("quanto", "int8", components=["transformer"]), model, device="cpu"))
    assert len(found) == 1
    w = found[0]
    assert w.severity == "warning" and w.field == "quantization" and w.component == "transformer"
    assert "0.53x" in w.message and "cpu" in w.message
    assert "torchao int8_weight_only" in w.suggestion
    # a fast plan, an unquantized denoiser, a plan that leaves the denoiser alone: no warning
    assert warnings(validate(G("torchao", "int8_weight_only", components=["transformer"]), model, device="cpu")) == []
    assert warnings(validate(None, model, device="cpu")) == []
    assert warnings(validate(G("quanto", "int8", components=["text_encoder_2"]), model, device="cpu")) == []
    assert warnings(validate(ComponentMap.make({"transformer": G("quanto", "int8")}), model, device="cpu"))


def test_warnings_do_not_block_and_reach_the_report(tiny_flux):
    spec = G("quanto", "int8", components=["transformer"])
    plan = plan_load(tiny_flux, spec, device="cpu")
    assert any(n.startswith("warning: quantization: quanto int8 on transformer") for n in plan.notes)
    with torch.inference_mode():
        result = load(tiny_flux, spec, device="cpu", cache=None)
    assert "note: warning: quantization: quanto int8" in result.table


@pytest.fixture
def gpu(monkeypatch):
    """Pretend the target is a GPU of a given compute capability (only the prediction reads it)."""

    def set_cc(cc):
        monkeypatch.setattr(devices, "compute_capability", lambda device: cc)

    return set_cc


def test_on_hopper_int8_dynamic_points_to_float8_dynamic_with_compile(tiny_flux, gpu):
    gpu((9, 0))
    model = inspect_model(tiny_flux)
    [w] = slow_plan_warnings({"transformer": G("torchao", "int8_dynamic")}, model, "cuda")
    assert "0.10x" in w.message and "hopper" in w.message
    assert "torchao float8_dynamic with compile regional (1.65x bf16)" in w.suggestion
    # compiled, float8 dynamic per-row is the fastest plan measured: no warning; eager it is slow
    assert slow_plan_warnings({"transformer": G("torchao", "float8_dynamic")}, model, "cuda", "regional") == []
    [eager] = slow_plan_warnings({"transformer": G("torchao", "float8_dynamic")}, model, "cuda", "none")
    assert "0.62x" in eager.message
    # nf4 (0.95x) is not flagged
    assert slow_plan_warnings({"transformer": G("bitsandbytes_4bit", "nf4")}, model, "cuda") == []


def test_the_alternative_must_run_on_the_gpu_and_fit_the_same_memory(tiny_flux, gpu):
    model = inspect_model(tiny_flux)
    gpu((8, 0))  # Ampere: no float8 dynamic (needs 8.9); figures come from the nearest measured GPU
    [w] = slow_plan_warnings({"transformer": G("torchao", "int8_dynamic")}, model, "cuda")
    assert "float8_dynamic" not in w.suggestion and "nf4 with compile regional" in w.suggestion
    gpu((9, 0))
    [w4] = slow_plan_warnings({"transformer": G("torchao", "int4_weight_only")}, model, "cuda")
    assert "int8" not in w4.suggestion and "float8" not in w4.suggestion, "8-bit plans need more memory"


def test_cli_validate_prints_the_warning(monkeypatch, models_root, tiny_sd3, capsys):
    wf = EXAMPLES / "SD3.5 torchao int8 (global).json"
    args = [
        "validate",
        str(wf),
        "--models",
        str(models_root),
        "--set",
        "PipeQuantLoadPipeline.model=tiny-sd3",
        "--set",
        "PipeQuantLoadPipeline.device=cpu",
        "--set",
        "PipeQuantSampler.width=32",
        "--set",
        "PipeQuantSampler.height=32",
        "--set",
        "PipeQuantBackend.backend=quanto",
        "--set",
        "PipeQuantBackend.quant_type=int8",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "warning: quantization: quanto int8 on transformer is predicted at 0.53x" in out and "OK" in out
    assert main(args[:-4]) == 0
    assert "warning" not in capsys.readouterr().out


def test_float8_dynamic_defaults_to_per_row_and_is_meant_for_compile():
    torchao = catalogue.get_backend("torchao")
    fp8 = torchao.quant_type("float8_dynamic")
    assert torchao.option("granularity").default == "per_row"
    assert fp8.compile_recommended and fp8.min_compute_capability == (8, 9) and fp8.needs_cuda
    assert fp8.describe()["compile_recommended"]
    assert "compile" in fp8.help
    described = json.dumps(catalogue.describe())
    assert '"compile_recommended": true' in described


@pytest.mark.cuda
def test_float8_dynamic_is_refused_below_compute_capability_8_9(tiny_flux):
    cc = torch.cuda.get_device_capability()
    problems = validate(
        G("torchao", "float8_dynamic", components=["transformer"]), inspect_model(tiny_flux), device="cuda"
    )
    refused = [p for p in problems if p.code == "compute_capability"]
    assert bool(refused) == (cc < (8, 9))


@pytest.mark.cuda
def test_float8_dynamic_per_row_compiles_on_cuda(tiny_flux):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 dynamic needs compute capability 8.9+")
    from torchao.quantization import PerRow

    from pipequant.resolver.run.sample import generate

    spec = G("torchao", "float8_dynamic", components=["transformer"])

    with torch.inference_mode():
        eager = load(tiny_flux, spec, device="cuda", cache=None)
        compiled = load(tiny_flux, spec, device="cuda", cache=None, compile="regional")
        config = compiled.plan.components["transformer"].build_config().quant_type
        assert isinstance(config.granularity, PerRow) or all(isinstance(g, PerRow) for g in config.granularity)
        kw = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "max_sequence_length": 16}
        a, b = generate(eager.pipeline, **kw), generate(compiled.pipeline, **kw)
    assert compiled.compiled.failed is None, compiled.compiled.failed
    assert (a - b).abs().max().item() < 0.1
