"""A quanto disk-cache entry (or saved folder) is read by PipeQuant's own reader (issue 25 item 1):
the module it builds is the one diffusers' `from_pretrained` builds from the same files, tensor
for tensor, and the one quantized on the first load, and it runs to the same output. diffusers
freezes every layer on the meta device before overwriting its weights; the reader makes each
weight once from its stored parts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_read_as_diffusers_reads_it, load_with_disk_cache, spy_on_read_saved

pytest.importorskip("optimum.quanto")

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep.disk_cache import DiskCache
from pipequant.resolver.keep.load import load
from pipequant.resolver.known.backends import quanto

SPEC = BackendSpec.make("quanto", "int8", components=["transformer"])


def _load(folder, cache, spec=SPEC):
    return load_with_disk_cache(folder, spec, cache)


def _tensors(module) -> dict:
    """Every parameter and buffer: its type, dtype, shape, device and values (a quanto weight's parts)."""
    out = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        parts = [getattr(t, p) for p in ("_data", "_scale") if getattr(t, p, None) is not None] or [t.data]
        out[name] = (type(t.data), t.dtype, tuple(t.shape), [(p.dtype, tuple(p.shape), p.device.type) for p in parts])
        out[name + "#values"] = [p.detach().clone() for p in parts]
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("#values"):
            assert all(torch.equal(x, y) for x, y in zip(a[name], b[name], strict=True)), name
        else:
            assert a[name] == b[name], name


@pytest.mark.parametrize("quant_type", ["int8", "float8"])
def test_a_cached_quanto_component_is_read_by_the_fast_reader_as_diffusers_reads_it(
    tiny_flux, tmp_path, monkeypatch, quant_type
):
    spec = BackendSpec.make("quanto", quant_type, components=["transformer"])
    cache = DiskCache(tmp_path / "cache")
    fresh = _load(tiny_flux, cache, spec).pipeline.transformer  # quantized now; the entry is written after

    calls = spy_on_read_saved(monkeypatch, quanto.Quanto)
    result = _load(tiny_flux, cache, spec)
    assert calls == [True], "the entry was not read by quanto's own reader"
    row = next(r for r in result.rows if r["component"] == "transformer")
    assert row["disk_cache"] == "read" and row["quantized_layers"] > 0
    fast = result.pipeline.transformer

    monkeypatch.setattr(quanto.Quanto, "read_saved", lambda self, *args: None)  # diffusers' from_pretrained
    library = _load(tiny_flux, cache, spec).pipeline.transformer

    _same(_tensors(fast), _tensors(fresh))
    data = [m.weight._data for m in fast.modules() if hasattr(getattr(m, "weight", None), "_data")]
    assert data and all(d.data_ptr() % 64 == 0 for d in data), "int8 data the CPU kernel needs aligned"
    maps = Path("/proc/self/maps")
    if maps.exists():  # aligned in the entry's file: mapped from it, not copied
        mapped = [line.split()[0].split("-") for line in maps.read_text().splitlines() if ".safetensors" in line]
        spans = [(int(a, 16), int(b, 16)) for a, b in mapped]
        assert all(any(a <= d.data_ptr() < b for a, b in spans) for d in data)
    # diffusers' read leaves each weight's wrapper on the meta device; its parts are the same
    _same(
        {k: v for k, v in _tensors(fast).items() if k.endswith("#values")},
        {k: v for k, v in _tensors(library).items() if k.endswith("#values")},
    )
    assert [type(m) for m in fast.modules()] == [type(m) for m in library.modules()]
    assert [getattr(m, "source_cls", None) for m in fast.modules()] == [
        getattr(m, "source_cls", None) for m in library.modules()
    ]
    assert_read_as_diffusers_reads_it(fast, library, fresh)


def test_files_that_are_not_exactly_the_models_tensors_go_to_diffusers(tiny_flux, tmp_path):
    """The reader reads nothing and answers None; diffusers' loader then reads (or refuses) the files."""
    from diffusers import FluxTransformer2DModel

    cache = DiskCache(tmp_path / "cache")
    _load(tiny_flux, cache)
    entry = next(p for p in (tmp_path / "cache").rglob("config.json"))
    names = {}
    from pipequant.resolver.files.safetensors_header import read_header

    for info in read_header(entry.parent / "diffusion_pytorch_model.safetensors"):
        names[info.name] = tuple(info.shape)

    def read():
        raise AssertionError("read although the names do not match")

    backend = quanto.QUANTO
    args = (FluxTransformer2DModel, "diffusers", entry.parent, torch.bfloat16)
    assert backend.read_saved(*args, {**names, "extra.weight": (4,)}, read) is None
    missing = dict(names)
    missing.pop(next(n for n in names if n.endswith("._scale")))
    assert backend.read_saved(*args, missing, read) is None
    bias = next(n for n in names if n.endswith(".bias"))
    assert backend.read_saved(*args, {**names, bias: (1, 2)}, read) is None
    assert backend.read_saved(FluxTransformer2DModel, "transformers", entry.parent, torch.bfloat16, names, read) is None


def test_an_entrys_byte_tensors_are_aligned_in_its_file_and_read_the_same(tmp_path):
    """quanto entries are written with their int8/float8 data 64-byte aligned in the file (only the
    header grows, with spaces), so a read maps them instead of copying them for quanto's CPU kernel."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pipequant.resolver.files.safetensors_header import read_spans
    from pipequant.resolver.keep.disk_cache import align_byte_tensors

    tensors = {
        "a.bias": torch.randn(3, dtype=torch.bfloat16),  # 6 bytes: every int8 tensor after it is off
        "a.input_scale": torch.ones((), dtype=torch.bfloat16),
        "a.weight._data": torch.randint(-127, 127, (64, 32), dtype=torch.int8),
        "b.weight._data": torch.randint(-127, 127, (16, 64), dtype=torch.int8),
        "b.weight._scale": torch.randn(16, 1, dtype=torch.bfloat16),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    starts = lambda: {s.info.name: s.start for s in read_spans(path)[0]}  # noqa: E731
    assert any(v % 64 for k, v in starts().items() if k.endswith("_data")), "the example must start misaligned"
    align_byte_tensors(path, 64)
    assert all(v % 64 == 0 for k, v in starts().items() if k.endswith("_data"))
    (n,) = __import__("struct").unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0
    again = load_file(str(path))
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    before = path.read_bytes()
    align_byte_tensors(path, 64)  # already aligned: untouched
    assert path.read_bytes() == before


def test_a_writer_file_that_cannot_be_aligned_is_not_cached_and_leaves_nothing(tiny_flux, tmp_path):
    """Aligning reads the written file's header: an unreadable one means "not cached", not a failed load."""

    def bad_writer(module, folder):
        (folder / "config.json").write_text("{}")
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)

    cache = DiskCache(tmp_path / "cache", writer=bad_writer)
    with torch.inference_mode():
        result = load(tiny_flux, SPEC, device="cpu", cache=None, disk_cache=cache)  # writes before returning
    row = next(r for r in result.rows if r["component"] == "transformer")
    assert row["disk_cache"] == "not cached" and "header" in row["disk_cache_reason"]
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".aligned"]
