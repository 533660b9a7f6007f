"""An SDNQ disk-cache entry (or saved folder) is read by PipeQuant's own reader (issue 25 item 1):
the module it builds is the one quantized on the first load, tensor for tensor (SDNQ's float32
scales exact, not rounded through bf16 as diffusers' loader rounds them), the one diffusers'
`from_pretrained` builds from the same files, layer for layer, and it runs to the same output.
A read that fails half-way is a broken entry: the load quantizes afresh and keeps nothing of it.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from helpers import assert_read_as_diffusers_reads_it, load_with_disk_cache, spy_on_read_saved

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")  # eager: compiling takes minutes on CPU (test_sdnq.py)

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep.disk_cache import DiskCache
from pipequant.resolver.known.backends import sdnq

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sdnq") is None, reason="sdnq is not installed (optional, GPL-3.0: pip install sdnq)"
)

SPEC = BackendSpec.make("sdnq", "int8", components=["transformer"])


def _load(folder, cache, spec=SPEC):
    return load_with_disk_cache(folder, spec, cache)


def _row(result) -> dict:
    return next(r for r in result.rows if r["component"] == "transformer")


def _tensors(module) -> dict:
    return {n: t.detach() for n, t in [*module.named_parameters(), *module.named_buffers()]}


def _same_tensors(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name, x in ta.items():
        y = tb[name]
        assert (type(x), x.dtype, x.shape, x.device) == (type(y), y.dtype, y.shape, y.device), name
        assert torch.equal(x, y), name


def _layers(module) -> list:
    """Each module's class and SDNQ's description of its quantized weight (its dequantizer's fields)."""
    out = []
    for name, m in module.named_modules():
        dequantizer = getattr(m, "sdnq_dequantizer", None)
        out.append((name, type(m).__name__, dict(vars(dequantizer)) if dequantizer is not None else None))
    return out


@pytest.mark.parametrize("quant_type", ["int8", "uint4"])  # uint4: packed weights and a zero point
def test_a_cached_sdnq_component_is_read_by_its_own_reader_as_it_was_quantized(
    tiny_flux, tmp_path, monkeypatch, quant_type
):
    spec = BackendSpec.make("sdnq", quant_type, components=["transformer"])
    cache = DiskCache(tmp_path / "cache")
    first = _load(tiny_flux, cache, spec)
    assert _row(first)["disk_cache"] == "written"
    fresh = first.pipeline.transformer

    calls = spy_on_read_saved(monkeypatch, sdnq.SDNQ)
    result = _load(tiny_flux, cache, spec)
    assert calls == [True], "the entry was not read by SDNQ's own reader"
    assert _row(result)["disk_cache"] == "read"
    fast = result.pipeline.transformer
    scales = [t for n, t in _tensors(fast).items() if n.endswith(".scale")]
    assert scales and all(t.dtype == torch.float32 for t in scales)
    assert quant_type != "uint4" or any(n.endswith(".zero_point") for n in _tensors(fast))
    _same_tensors(fast, fresh)  # float32 scales included: exact, with nothing put back after

    monkeypatch.setattr(sdnq.SDNQ, "read_saved", lambda self, *args: None)  # diffusers' from_pretrained
    library = _load(tiny_flux, cache, spec).pipeline.transformer
    _same_tensors(fast, library)
    assert _layers(fast) == _layers(library) == _layers(fresh)
    assert_read_as_diffusers_reads_it(fast, library, fresh)


def test_files_that_are_not_exactly_the_models_tensors_go_to_diffusers(tiny_flux, tmp_path):
    """The reader reads nothing and answers None; diffusers' loader then reads (or refuses) the files."""
    from diffusers import FluxTransformer2DModel

    from pipequant.resolver.files.safetensors_header import read_header

    cache = DiskCache(tmp_path / "cache")
    _load(tiny_flux, cache)
    entry = next(p for p in (tmp_path / "cache").rglob("config.json")).parent
    names = {t.name: tuple(t.shape) for t in read_header(entry / "diffusion_pytorch_model.safetensors")}

    def read():
        raise AssertionError("read although the names do not match")

    backend = sdnq.SDNQ_BACKEND
    args = (FluxTransformer2DModel, "diffusers", entry, torch.bfloat16)
    assert backend.read_saved(*args, {**names, "extra.weight": (4,)}, read) is None
    missing = dict(names)
    missing.pop(next(n for n in names if n.endswith(".scale")))
    assert backend.read_saved(*args, missing, read) is None
    bias = next(n for n in names if n.endswith(".bias"))
    assert backend.read_saved(*args, {**names, bias: (1, 2)}, read) is None
    assert backend.read_saved(FluxTransformer2DModel, "transformers", entry, torch.bfloat16, names, read) is None


def test_a_read_that_fails_half_way_leaves_nothing_and_the_component_is_quantized_again(
    tiny_flux, tmp_path, monkeypatch
):
    import sdnq.quantizer

    cache = DiskCache(tmp_path / "cache")
    fresh = _load(tiny_flux, cache).pipeline.transformer
    real = sdnq.quantizer.SDNQQuantizer.create_quantized_param
    calls = []

    def fails_later(self, *args, **kwargs):
        if self.pre_quantized:  # reading an entry (quantizing calls it too)
            calls.append(1)
            if len(calls) % 5 == 0:  # after some of its tensors are in, every time it is read
                raise RuntimeError("disk read error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sdnq.quantizer.SDNQQuantizer, "create_quantized_param", fails_later)
    result = _load(tiny_flux, cache)
    assert len(calls) >= 5, "the reader did not get as far as the failure"
    row = _row(result)
    assert row["disk_cache"] == "written", row  # the broken entry was deleted and written again
    assert any("disk read error" in note for note in result.load_notes)
    module = result.pipeline.transformer
    assert not [n for n, t in _tensors(module).items() if t.device.type == "meta"]
    _same_tensors(module, fresh)
