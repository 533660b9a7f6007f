"""A plan larger than the machine is flagged before Run (issue 22, item 15): on hollow full-size
pipelines (real configs, sparse files), with the machine's memory given."""

from __future__ import annotations

import importlib

import pytest

from pipequant.resolver.decide import fits
from pipequant.resolver.decide.estimate import estimate
from pipequant.resolver.decide.fits import Memory, fit_problems
from pipequant.resolver.keep.load import plan_load
from pipequant.resolver.links.spec import BackendSpec, ComponentMap

GIB = 1024**3
CPU_24 = (Memory("RAM", 24 * GIB, 20 * GIB), None)


def _gpu(total_gb, free_gb=None, ram_gb=64):
    free_gb = total_gb if free_gb is None else free_gb
    return Memory("RAM", ram_gb * GIB, ram_gb * GIB), Memory("VRAM (test GPU)", total_gb * GIB, free_gb * GIB)


def _plan(folder, spec=None, device="cpu", offload="none"):
    return plan_load(folder, spec, dtype="bfloat16", device=device, offload=offload)


def _codes(problems):
    return [(p.code, p.severity, p.input) for p in problems]


def test_bf16_flux_dev_on_a_24_gb_cpu_is_flagged_with_the_fix(flux_dev):
    plan = _plan(flux_dev)
    found = fit_problems(plan, estimate(plan), CPU_24)
    assert _codes(found) == [("plan_exceeds_memory", "warning", "device")]
    assert "33.7 GB of RAM" in found[0].message and "Auto Quantization Plan" in found[0].suggestion


def test_a_quantized_flux_dev_fits_the_same_cpu(flux_dev):
    spec = ComponentMap.make(
        {
            "transformer": BackendSpec.make("torchao", "int8_weight_only"),
            "text_encoder_2": BackendSpec.make("torchao", "int8_weight_only"),
        }
    )
    plan = _plan(flux_dev, spec)
    assert fit_problems(plan, estimate(plan), CPU_24) == []


def test_on_a_gpu_without_offload_more_than_the_card_is_refused(flux_dev):
    plan = _plan(flux_dev)
    plan.device, plan.offload = "cuda", "none"  # as planned on a GPU machine
    found = fit_problems(plan, estimate(plan), _gpu(24))
    assert _codes(found) == [("plan_exceeds_memory", "error", "device")]
    assert "VRAM (test GPU)" in found[0].message and 'offload to "model"' in found[0].suggestion
    # with model offload only the largest component (the 23.8 GB transformer) must fit
    plan.offload = "model"
    assert _codes(fit_problems(plan, estimate(plan), _gpu(16))) == [("plan_exceeds_memory", "error", "offload")]
    assert fit_problems(plan, estimate(plan), _gpu(24)) == []
    # no offload on an 80 GB card with 30 GB free: a warning (ComfyUI may free its own models)
    plan.offload = "none"
    assert _codes(fit_problems(plan, estimate(plan), _gpu(80, 30))) == [("plan_may_not_fit", "warning", "device")]
    assert fit_problems(plan, estimate(plan), _gpu(80)) == []


def test_the_estimate_route_flags_it_on_the_load_node(monkeypatch, flux_dev):
    from test_routes import call

    monkeypatch.setenv("PIPEQUANT_MODELS", str(flux_dev.parent))
    monkeypatch.setattr(fits, "machine_memory", lambda device: CPU_24)
    status, body = call(
        "POST", "/pipequant/estimate", json={"model": flux_dev.name, "spec": None, "device": "cpu", "dtype": "bfloat16"}
    )
    assert status == 200 and body["estimate"] is not None
    flagged = [p for p in body["problems"] if p["code"] == "plan_exceeds_memory"]
    assert len(flagged) == 1 and flagged[0]["node"] is None and flagged[0]["input"] == "device"


def test_the_load_node_refuses_a_certain_out_of_memory_before_reading(monkeypatch, flux_dev):
    from pipequant.nodes import NODE_CLASS_MAPPINGS
    from pipequant.nodes.messages import NodeInputError

    monkeypatch.setenv("PIPEQUANT_MODELS", str(flux_dev.parent))
    Load = NODE_CLASS_MAPPINGS["PipeQuantLoadPipeline"]
    monkeypatch.setattr(fits, "machine_memory", lambda device: CPU_24)
    plan = Load.prepared(flux_dev.name, "bfloat16", "cpu", "none", check_fit=True).plan  # as the load asks
    assert any(n.startswith("warning: ") and "33.7 GB of RAM" in n for n in plan.notes)
    monkeypatch.setattr(fits, "machine_memory", lambda device: _gpu(24))
    prepare_module = importlib.import_module("pipequant.resolver.decide.prepare")  # where every surface asks
    monkeypatch.setattr(prepare_module, "fit_problems", lambda p, e, m=None: fits.fit_problems(_as_cuda(p), e, m))
    with pytest.raises(NodeInputError) as info:
        Load().load(flux_dev.name, "bfloat16", "cpu", "none")  # refused before a weight is read
    assert "would run out of memory" in str(info.value)


def _as_cuda(plan):
    plan.device = "cuda"
    return plan
