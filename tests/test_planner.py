"""The auto planner: on hollow full-size FLUX.1-dev every plan fits its budget and is the best
under its goal among all the catalogue's per-component combinations (checked by brute force);
availability and ordering rules; "nothing fits"; the command; the route; and on the tiny
pipelines the plan loads, samples and holds what it predicted."""

from __future__ import annotations

import copy
import itertools
import json
from types import SimpleNamespace

import pytest
import torch

from pipequant.resolver.decide.planner import GIB, DeviceProfile, NothingFits, _offload_ok, auto_plan
from pipequant.resolver.decide.planner.candidates import component_choices, load_dtype_for, roles
from pipequant.resolver.decide.planner.search import GOALS, OFFLOAD_ORDER, goal_key, peak
from pipequant.resolver.decide.planner.working import working_memory
from pipequant.resolver.files.inspect_model import inspect_model

BUDGETS = (6, 8, 10, 12, 16, 24, 32)
CAPABILITIES = ((7, 5), (8, 6), (8, 9), (9, 0))


def _gpu(cc) -> DeviceProfile:
    return DeviceProfile(f"gpu {cc}", 80 * GIB, 80 * GIB, cc)


def _brute_force(model, profile, budget, goals, wm):
    """Best key per goal over every combination of every choice (no pruning), in the planner's
    order: on the device, then model, then sequential offload; deprecated backends last."""
    dtype = load_dtype_for(profile)
    role = roles(model)
    every = {n: component_choices(model, n, profile, dtype)[0] for n in model.module_names}
    best = {}
    for goal in goals:
        found = None
        for allow_deprecated, mode in itertools.product((False, True), OFFLOAD_ORDER):
            pools = [
                [c for c in cs if (allow_deprecated or not c.deprecated) and not _offload_ok(c, mode)]
                for cs in every.values()
            ]
            keys = [
                goal_key(goal, combo, role, pk)
                for combo in itertools.product(*pools)
                if (pk := peak(combo, role, mode, wm)).total <= budget
            ]
            if keys:
                found = (mode, min(keys))
                break
        best[goal] = found
    return best


@pytest.mark.parametrize("cc", CAPABILITIES, ids=lambda cc: f"cc{cc[0]}.{cc[1]}")
def test_every_plan_fits_and_is_the_best_by_brute_force(flux_dev, cc):
    model = inspect_model(flux_dev)
    profile = _gpu(cc)
    role = roles(model)
    configs = {r: model.components[n].config_dict for n, r in role.items()}
    wm = working_memory(model.pipeline_class, 1024, 1024, 1, configs.get("denoiser"), configs.get("vae"))
    for budget_gb in BUDGETS:
        budget = budget_gb * GIB
        expected = _brute_force(model, profile, budget, GOALS, wm)
        for goal in GOALS:
            if expected[goal] is None:
                with pytest.raises(NothingFits):
                    auto_plan(model, profile, budget, goal)
                continue
            plan = auto_plan(model, profile, budget, goal)
            assert plan.fits and plan.peak.total <= budget, (budget_gb, goal)
            combo = tuple(plan.choices.values())
            assert (plan.offload, goal_key(goal, combo, role, plan.peak)) == expected[goal], (budget_gb, goal, cc)
            for c in combo:  # availability on this GPU
                if c.backend:
                    from pipequant.resolver.known import catalogue

                    qt = catalogue.get_backend(c.backend).quant_type(c.quant_type)
                    assert qt.min_compute_capability is None or cc >= qt.min_compute_capability
                    assert plan.dtype in qt.compute_dtypes


def test_on_device_before_offload_and_the_vae_stays_unquantized(flux_dev):
    model = inspect_model(flux_dev)
    big = auto_plan(model, _gpu((9, 0)), 40 * GIB, "quality")
    assert big.offload == "none" and all(c.backend is None for c in big.choices.values())  # 40 GiB holds bf16
    small = auto_plan(model, _gpu((9, 0)), 6 * GIB, "quality")
    assert small.offload in ("model", "sequential") and any("offload" in n for n in small.notes)
    assert small.choices["vae"].backend is None
    with pytest.raises(NothingFits):
        auto_plan(model, _gpu((9, 0)), 6 * GIB, "quality", allow_offload=False)


def test_turing_loads_in_float16_and_gets_no_float8_dynamic(flux_dev):
    plan = auto_plan(inspect_model(flux_dev), _gpu((7, 5)), 16 * GIB, "speed")
    assert plan.dtype == "float16"
    reasons = {(r["component"], r["choice"]): r["reason"] for r in plan.rejected}
    assert "compute capability 8.9" in reasons[("transformer", "torchao float8_dynamic")]


def test_deprecated_backend_only_when_nothing_else_fits(flux_dev):
    model = inspect_model(flux_dev)
    for budget in (10, 16, 24):
        plan = auto_plan(model, _gpu((9, 0)), budget * GIB, "smallest")
        assert not any(c.deprecated for c in plan.choices.values())
    assert any("deprecated" in r["reason"] for r in auto_plan(model, _gpu((9, 0)), 24 * GIB, "smallest").rejected)


def test_nothing_fits_names_the_smallest_footprint_and_the_fixes(flux_dev):
    with pytest.raises(NothingFits) as exc:
        auto_plan(inspect_model(flux_dev), _gpu((8, 9)), 3 * GIB, "quality", allow_offload=False)
    text = str(exc.value)
    assert "smallest reachable peak" in text and "allowing offload" in text and "lower resolution" in text
    assert exc.value.smallest_peak > 3 * GIB


def test_unmeasured_speed_is_said_not_invented(flux_dev):
    plan = auto_plan(inspect_model(flux_dev), _gpu((8, 6)), 16 * GIB, "speed")  # Ampere: no speed rows
    assert plan.choices["transformer"].speed is None
    assert any("not measured" in n for n in plan.notes)


def test_plan_json_shape_of_the_command(flux_dev, capsys):
    from pipequant.runner.cli import main

    profile = json.dumps({"name": "RTX 4090", "total_gb": 24, "free_gb": 23, "compute_capability": [8, 9]})
    root = str(flux_dev.parent)
    assert (
        main(
            [
                "plan",
                flux_dev.name,
                "--models",
                root,
                "--budget",
                "16",
                "--goal",
                "balanced",
                "--device-profile",
                profile,
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"components", "offload", "predicted_peak_bytes", "fits", "rejected"}
    assert out["fits"] is True and out["predicted_peak_bytes"] <= 16 * GIB
    for row in out["components"].values():
        assert set(row) >= {"backend", "quant_type", "predicted_bytes"} and isinstance(row["predicted_bytes"], int)
    assert (
        main(["plan", flux_dev.name, "--models", root, "--budget", "2", "--no-offload", "--device-profile", profile])
        == 2
    )
    assert "no plan fits" in capsys.readouterr().err
    assert main(["plan", flux_dev.name, "--models", root, "--device-profile", "[1]"]) == 2
    assert "device profile" in capsys.readouterr().err
    assert main(["plan", flux_dev.name, "--models", root, "--variant", "fp16", "--device-profile", profile]) == 2
    assert 'no "fp16" weight files' in capsys.readouterr().err


def test_route_validates_and_plans(flux_dev, monkeypatch):
    from pipequant.nodes import host, routes

    monkeypatch.setattr(host, "model_roots", lambda: [flux_dev.parent])
    ok = routes.auto_plan({"model": flux_dev.name, "budget_gb": 24, "goal": "quality"})
    assert ok["ok"] is True and ok["predicted_peak_bytes"] <= 24 * GIB and "transformer" in ok["table"]
    bad = routes.auto_plan({"model": flux_dev.name, "budget_gb": "lots", "goal": "fastest", "width": 7})
    assert bad["ok"] is False and {p["field"] for p in bad["problems"]} >= {"budget_gb", "goal", "width"}
    with pytest.raises(routes.BadRequest):
        routes.auto_plan({})
    missing = routes.auto_plan({"model": flux_dev.name, "budget_gb": 24, "variant": "fp16"})  # no fp16 files
    assert missing["ok"] is False and [p["field"] for p in missing["problems"]] == ["variant"]
    with pytest.raises(routes.BadRequest):
        routes.auto_plan({"model": flux_dev.name, "variant": ["fp16"]})


def test_tiny_auto_plan_loads_samples_and_holds_what_it_predicted(tiny_flux):
    """CPU, a budget that forces quantization: the plan loads through the ordinary path, samples,
    and the Memory Report's bytes are within 5 % of the prediction."""
    from pipequant.resolver.keep.load import load
    from pipequant.resolver.run.sample import generate

    model = inspect_model(tiny_flux)
    cpu = DeviceProfile("cpu", 16 * GIB, 16 * GIB, None)
    everything = auto_plan(model, cpu, 16 * GIB, "quality", width=64, height=64)
    assert all(c.backend is None for c in everything.choices.values())
    budget = int(everything.peak.total - everything.choices["transformer"].bytes * 0.3)
    plan = auto_plan(model, cpu, budget, "quality", width=64, height=64)
    assert plan.choices["transformer"].backend is not None and plan.peak.total <= budget
    with torch.inference_mode():
        result = load(tiny_flux, plan.spec, device="cpu", cache=None)
        images = generate(result.pipeline, prompt="a fox", steps=1, width=32, height=32, seed=0, max_sequence_length=16)
    assert images.shape == (1, 32, 32, 3) and torch.isfinite(images).all()
    real = {r["component"]: r["bytes"] for r in result.rows if r.get("bytes")}
    predicted = {n: c.bytes for n, c in plan.choices.items()}
    assert sum(predicted.values()) == pytest.approx(sum(real.values()), rel=0.05)
    for name, value in predicted.items():
        assert value == pytest.approx(real[name], rel=0.05), name


def test_plan_command_sums_the_rejected_choices_up(flux_dev, capsys):
    """Issue 26 item 8: `plan` printed 59 rejected lines under a 4-row answer; now the most common
    reasons (with counts), every choice with --verbose; no doubled parentheses in a hint."""
    from pipequant.runner.cli import main

    profile = json.dumps({"name": "RTX 4090", "total_gb": 24, "free_gb": 23, "compute_capability": [8, 9]})
    args = ["plan", flux_dev.name, "--models", str(flux_dev.parent), "--budget", "16", "--device-profile", profile]
    assert main(args) == 0
    short = capsys.readouterr().out
    assert main([*args, "--verbose"]) == 0
    full = capsys.readouterr().out
    head, _, reasons = short.partition("rejected (")
    listed = [line for line in reasons.splitlines()[1:] if line.startswith("  ")]
    assert 0 < len(listed) <= 6 and all(" × " in line or line.startswith("  … and") for line in listed), short
    assert "--verbose" in short and full.startswith(head)
    assert full.count("\n  ") > len(listed)  # every rejected choice

    # A backend that is not installed: its install hint has its own parentheses, not doubled.
    from pipequant.resolver.decide.planner.candidates import _unavailable_reason
    from pipequant.resolver.known.backends import ALL_BACKENDS

    sdnq = next(b for b in ALL_BACKENDS if b.name == "sdnq")

    missing = copy.copy(sdnq)
    object.__setattr__(missing, "modules", ("pipequant_no_such_module",))  # a frozen dataclass
    assert not missing.installed()
    reason = _unavailable_reason(missing, sdnq.quant_types[0], SimpleNamespace(library=sdnq.libraries[0]), None, "")
    assert "pip install sdnq" in reason and "))" not in reason, reason
