"""A disk-cache entry of quanto or SDNQ is read without torch's slow meta clamp (issue 25 item 1):
both libraries rebuild a saved model by quantizing its empty (meta) weights first, and torch runs
meta clamps through Python reference code (3-7 ms each). The backend's `saved_read_context`
answers those shape-only ops at once; the module read is the same tensor for tensor. (quanto's
8-bit entries are read by its own reader, tests/test_quanto_saved_read.py: the context serves the
rest, here played by turning that reader off.)"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep.disk_cache import DiskCache
from pipequant.resolver.keep.load import load
from pipequant.resolver.known import catalogue
from pipequant.resolver.known.backends import base

G = BackendSpec.make


def test_meta_shortcuts_answer_shapes_and_leave_real_tensors_alone():
    quanto_op = {"quanto::quantize_symmetric": lambda *a: ("custom", a)}
    x = torch.empty(64, 32, device="meta", dtype=torch.bfloat16)
    real = torch.linspace(-3, 3, 12).reshape(3, 4)
    with base.meta_shortcuts(quanto_op):
        clamped = torch.clamp(x, -1, 1)
        assert clamped.is_meta and clamped.shape == x.shape and clamped.dtype == x.dtype and clamped is not x
        assert x.clamp_(min=-1, max=1) is x and x.round_() is x
        assert torch.round(x).shape == x.shape
        assert torch.equal(real.clamp(-1, 1), real.clamp(-1, 1).clone())  # real tensors: real results
        assert real.clamp(-1, 1).max().item() == 1.0 and torch.equal(torch.round(real), real.round())
        bounded = torch.clamp(x, min=torch.zeros(32, device="meta", dtype=torch.bfloat16))  # tensor bound: torch's own
        assert bounded.shape == x.shape
    assert not torch.overrides._get_current_function_mode_stack()  # the mode is gone after the context


def _calls():
    w = torch.empty(64, 32, device="meta", dtype=torch.float32)
    scale = torch.empty(64, 1, device="meta", dtype=torch.float32)
    wide = torch.empty(3, 64, 32, device="meta", dtype=torch.bfloat16)
    return [
        lambda: w.abs(),
        lambda: torch.abs(wide),
        lambda: torch.amax(w, dim=1, keepdims=True),
        lambda: w.amax(dim=-1),
        lambda: torch.amax(wide, dim=(0, 2), keepdim=True),
        lambda: torch.amax(wide),
        lambda: torch.div(w, scale),
        lambda: torch.div(scale, w),
        lambda: w.div(scale),
        lambda: torch.div(w, 2.0),  # a number: torch's own
        lambda: torch.div(w.t(), scale.t()),  # not contiguous: torch's own
        lambda: torch.div(w.to(torch.bfloat16), scale),  # mixed dtypes: torch's own
        lambda: torch.amax(w, dim=1, keepdim=True).div_(127.0),
        lambda: w.clone().mul_(3),
    ]


@pytest.mark.parametrize("index", range(len(_calls())))
def test_meta_shortcuts_answer_what_torch_answers(index):
    """Each shortcut's meta result has torch's own shape, strides and dtype."""
    expected = _calls()[index]()
    with base.meta_shortcuts():
        found = _calls()[index]()
    assert found.is_meta
    assert (found.shape, found.stride(), found.dtype) == (expected.shape, expected.stride(), expected.dtype)


@pytest.mark.parametrize("backend,quant_type", [("quanto", "int8"), ("sdnq", "int8")])
def test_a_cached_read_runs_in_the_backend_context_and_reads_the_same_tensors(
    tiny_flux, tmp_path, monkeypatch, backend, quant_type
):
    if importlib.util.find_spec(catalogue.get_backend(backend).modules[0]) is None:
        pytest.skip(f"{backend} is not installed")
    monkeypatch.setattr(type(catalogue.get_backend(backend)), "read_saved", lambda self, *args: None)
    spec = G(backend, quant_type, components=["transformer"])
    cache = DiskCache(tmp_path / "cache")
    with torch.inference_mode():
        load(tiny_flux, spec, device="cpu", cache=None, disk_cache=cache)  # writes the entry
    from pipequant.resolver.keep import wait_for_writes

    wait_for_writes()
    entered = []
    real_context = type(catalogue.get_backend(backend)).saved_read_context

    def spy(self):
        entered.append(self.name)
        return real_context(self)

    def read():
        with torch.inference_mode():
            result = load(tiny_flux, spec, device="cpu", cache=None, disk_cache=cache)
        row = next(r for r in result.rows if r["component"] == "transformer")
        assert row["disk_cache"] == "read", row
        return dict(result.pipeline.transformer.state_dict())

    monkeypatch.setattr(type(catalogue.get_backend(backend)), "saved_read_context", spy)
    fast = read()
    assert entered == [backend]
    monkeypatch.setattr(
        type(catalogue.get_backend(backend)), "saved_read_context", lambda self: contextlib.nullcontext()
    )
    plain = read()
    assert fast.keys() == plain.keys()
    for key, tensor in plain.items():
        other = fast[key]
        assert type(other) is type(tensor) and other.dtype == tensor.dtype and other.shape == tensor.shape, key
        inner = [t for t in (getattr(tensor, "_data", None), getattr(tensor, "_scale", None)) if t is not None]
        if inner:  # quanto's quantized tensors: compare what they hold
            assert all(torch.equal(a, b) for a, b in zip(inner, [other._data, other._scale])), key
        else:
            assert torch.equal(other, tensor), key
