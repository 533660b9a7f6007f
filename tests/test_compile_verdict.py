"""The compile switch never slows a plan down silently: where compile was measured slower than eager
(or failing) for the denoiser's backend and quant type on the target's device class, validation
warns before Run and the load keeps the denoiser eager, saying why in the report."""

from __future__ import annotations

import pytest
import torch

from pipequant.resolver import BackendSpec
from pipequant.resolver.decide import validate
from pipequant.resolver.decide.slow_plan import compile_kept_eager
from pipequant.resolver.files import inspect_model
from pipequant.resolver.keep.load import load
from pipequant.resolver.known import measured

G = BackendSpec.make
INT8 = G("torchao", "int8_weight_only", components=["transformer"])


def _kept(problems):
    return [p for p in problems if p.code == "compile_kept_eager"]


def test_every_compile_figure_names_its_source_and_says_faster_slower_or_fails():
    data = measured.data()
    assert data["compile"]
    for row in data["compile"]:
        assert row["source"] in data["sources"], row
        assert (row.get("factor") is None) != (row.get("fails") is None), row  # one verdict per row
    # A CPU figure never decides for a GPU, and the other way round.
    assert measured.compile_figure("torchao", "int8_weight_only", "hopper") is None


def test_validate_warns_where_compile_is_slower_and_names_the_figure(tiny_flux):
    model = inspect_model(tiny_flux)
    (w,) = _kept(validate(INT8, model, device="cpu", compile="regional"))
    assert w.severity == "warning" and w.field == "compile" and w.component == "transformer"
    assert "eager" in w.message and "x its eager speed" in w.message and "cpu" in w.message
    assert 'compile to "none"' in w.suggestion
    nf4 = G("bitsandbytes_4bit", "nf4", components=["transformer"])
    assert "fails" in compile_kept_eager("bitsandbytes_4bit", "nf4", "cpu")
    assert nf4 is not None
    # Where compile gains (bf16 on CPU) or is not asked for: nothing to say.
    assert _kept(validate(None, model, device="cpu", compile="regional")) == []
    assert _kept(validate(INT8, model, device="cpu", compile="none")) == []


def test_the_load_keeps_that_denoiser_eager_and_the_report_says_why(tiny_flux):
    with torch.inference_mode():
        result = load(tiny_flux, INT8, device="cpu", cache=None, compile="regional")
    transformer = result.pipeline.transformer
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in transformer.modules())
    assert result.compiled.mode == "none"
    assert any("not applied" in n and "runs eager" in n for n in result.notes)
    assert "compile" in result.table and "eager" in result.table


def test_validate_says_so_where_compile_was_never_measured(tiny_flux, monkeypatch):
    """A plan whose compile speed nobody measured on this device class is compiled, with a warning
    before Run: never a silent slow-down, never a silent refusal."""
    pytest.importorskip("sdnq", reason="SDNQ is an optional extra (pip install sdnq)")
    model = inspect_model(tiny_flux)
    sdnq = G("sdnq", "int8", components=["transformer"])
    assert measured.compile_figure("sdnq", "int8", "cpu") is None
    (w,) = [p for p in validate(sdnq, model, device="cpu", compile="regional") if p.code == "compile_not_measured"]
    assert w.severity == "warning" and w.field == "compile" and w.component == "transformer"
    assert "sdnq int8" in w.message and "never measured on cpu" in w.message and "bench.step_speed" in w.suggestion
    # A measured plan gets the measured verdict only; no compile asked: nothing.
    assert not [p for p in validate(INT8, model, device="cpu", compile="regional") if p.code == "compile_not_measured"]
    assert not [p for p in validate(None, model, device="cpu", compile="regional") if p.code == "compile_not_measured"]
    assert not [p for p in validate(sdnq, model, device="cpu", compile="none") if p.code == "compile_not_measured"]
