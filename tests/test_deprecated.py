"""quanto is deprecated by diffusers 0.42 (removed in 1.0): the catalogue, the editor's data and
validation say so, and it keeps working."""

from __future__ import annotations

import torch

from pipequant.resolver import BackendSpec, ComponentCache
from pipequant.resolver.decide import validate
from pipequant.resolver.files import inspect_model
from pipequant.resolver.keep import load
from pipequant.resolver.known.catalogue import describe, get_backend


def test_catalogue_marks_quanto_deprecated_and_only_quanto():
    by_name = {b["name"]: b for b in describe()["backends"]}  # what GET /pipequant/backends serves
    assert "diffusers 1.0" in by_name["quanto"]["deprecated"]
    assert [n for n, b in by_name.items() if b["deprecated"]] == ["quanto"]
    assert get_backend("quanto").deprecated == by_name["quanto"]["deprecated"]


def test_quanto_validates_with_a_warning_and_still_loads(tiny_flux):
    spec = BackendSpec.make("quanto", "int8", components=["transformer"])
    problems = validate(spec, inspect_model(tiny_flux), dtype="bfloat16", device="cpu")
    deprecation = [p for p in problems if p.code != "slow_plan"]  # slow_plan: a measured-speed warning
    assert [(p.code, p.severity) for p in deprecation] == [("backend_deprecated", "warning")]
    assert all(p.severity == "warning" for p in problems)
    assert "torchao" in deprecation[0].suggestion
    with torch.inference_mode():
        result = load(tiny_flux, spec, device="cpu", cache=ComponentCache())
    row = next(r for r in result.rows if r["component"] == "transformer")
    assert row["backend"] == "quanto" and row["bytes"] < row["bytes_before"]
