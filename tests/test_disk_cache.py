"""The on-disk cache of quantized components, on the tiny FLUX pipeline.

Quantize calls are counted by spying on diffusers' and transformers' quantizer factories: a load
that quantizes asks for a quantizer with pre_quantized=False, a load from an entry with True.
Loads run inside torch.inference_mode(), as in ComfyUI; the in-memory component cache is off
(cache=None) so that every load really goes to disk.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pipequant.resolver import BackendSpec, ComponentMap
from pipequant.resolver.keep import disk_cache
from pipequant.resolver.keep.disk_cache import ENTRY_FILE, DiskCache, check_entry, entry_key, not_cacheable
from pipequant.resolver.keep.load import load, plan_load
from pipequant.resolver.keep.save import save_component
from pipequant.resolver.run.sample import generate

G = BackendSpec.make
INT8 = G("torchao", "int8_weight_only", components=["transformer", "text_encoder_2"])
TRANSFORMER_INT8 = G("torchao", "int8_weight_only", components=["transformer"])


@pytest.fixture
def quantize_calls(monkeypatch):
    """Component names (by class) for which a quantizer was made to quantize on load."""
    from diffusers.quantizers.auto import DiffusersAutoQuantizer
    from transformers.quantizers.auto import AutoHfQuantizer

    calls = {"quantize": 0, "prequantized": 0}
    for cls in (DiffusersAutoQuantizer, AutoHfQuantizer):
        original = cls.from_config

        def spy(klass, config, *args, _original=original, **kwargs):
            calls["prequantized" if kwargs.get("pre_quantized") else "quantize"] += 1
            return _original(config, *args, **kwargs)

        monkeypatch.setattr(cls, "from_config", classmethod(spy))
    return calls


def _load(folder, spec, cache: DiskCache | None, **kwargs):
    with torch.inference_mode():
        return load(folder, spec, device="cpu", cache=None, disk_cache=cache, **kwargs)


def _rows(result) -> dict:
    return {r["component"]: r for r in result.rows}


def _image(result):
    with torch.inference_mode():
        return generate(result.pipeline, prompt="a cat", steps=2, width=32, height=32, seed=3, max_sequence_length=32)


def _entries(folder: Path) -> list[Path]:
    """The entry folders in the cache configured at `folder` (they live in its marked store)."""
    store = folder / disk_cache.STORE
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")) if store.is_dir() else []


@pytest.fixture
def own_flux(tiny_flux, tmp_path) -> Path:
    """A private copy of the tiny pipeline, for tests that edit its files."""
    return Path(shutil.copytree(tiny_flux, tmp_path / "models" / "tiny-flux"))


@pytest.mark.parametrize(
    "spec,needs_bnb",
    [
        (INT8, False),
        (G("bitsandbytes_4bit", "nf4", components=["transformer", "text_encoder_2"]), True),
        (G("quanto", "int8", components=["transformer"]), False),
    ],
    ids=["torchao-int8", "bnb-nf4", "quanto-int8"],
)
def test_first_load_writes_second_reads_with_identical_output(
    request, tiny_flux, tmp_path, quantize_calls, spec, needs_bnb
):
    if needs_bnb:
        request.getfixturevalue("bnb_cpu")
    cache = DiskCache(tmp_path / "cache")
    names = spec.components
    first = _load(tiny_flux, spec, cache)
    assert quantize_calls["quantize"] == len(names)
    assert {n: _rows(first)[n]["disk_cache"] for n in names} == dict.fromkeys(names, "written")
    assert len(_entries(tmp_path / "cache")) == len(names)
    image_first = _image(first)
    del first

    second = _load(tiny_flux, spec, cache)
    assert quantize_calls["quantize"] == len(names), "the second load quantized again"
    assert quantize_calls["prequantized"] == len(names)
    rows = _rows(second)
    assert all(rows[n]["disk_cache"] == "read" for n in names)
    assert rows["vae"]["disk_cache"] is None and rows["vae"]["action"] == "keep"
    assert all(rows[n]["quantized_layers"] > 0 and rows[n]["bytes"] < rows[n]["bytes_before"] for n in names)
    assert second.table.count("(disk cache)") == len(names)
    assert torch.equal(_image(second), image_first)


def test_key_misses_on_edited_files_plan_and_library_versions(own_flux, monkeypatch):
    plan = plan_load(own_flux, TRANSFORMER_INT8, device="cpu")
    row = plan.components["transformer"]
    key = entry_key(plan, row)
    assert entry_key(plan_load(own_flux, TRANSFORMER_INT8, device="cpu"), row) == key  # stable

    other_plans = [
        G("torchao", "float8_weight_only", components=["transformer"]),
        G("torchao", "int8_weight_only", components=["transformer"], options={"modules_to_not_convert": ["norm_out"]}),
    ]
    for spec in other_plans:
        changed = plan_load(own_flux, spec, device="cpu")
        assert entry_key(changed, changed.components["transformer"]) != key, spec
    fp16 = plan_load(own_flux, TRANSFORMER_INT8, dtype="float16", device="cpu")
    assert entry_key(fp16, fp16.components["transformer"]) != key

    import torchao

    monkeypatch.setattr(torchao, "__version__", "99.0.0")
    assert entry_key(plan, row) != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    assert entry_key(plan, row) != key
    monkeypatch.undo()
    assert entry_key(plan, row) == key

    weights = own_flux / "transformer" / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert entry_key(plan_load(own_flux, TRANSFORMER_INT8, device="cpu"), row) != key


def test_an_edited_source_file_misses_and_writes_a_new_entry(own_flux, tmp_path, quantize_calls):
    cache = DiskCache(tmp_path / "cache")
    _load(own_flux, TRANSFORMER_INT8, cache)
    config = own_flux / "transformer" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data, indent=4))  # same model, different bytes: the files changed
    result = _load(own_flux, TRANSFORMER_INT8, cache)
    assert quantize_calls["quantize"] == 2
    assert _rows(result)["transformer"]["disk_cache"] == "written"
    assert len(_entries(tmp_path / "cache")) == 2


def _slow_writer(marker: Path):
    def write(module, folder):
        save_component(module, folder)
        marker.write_text(str(folder))
        time.sleep(120)

    return write


def _child_load(folder, cache_dir, marker):
    cache = DiskCache(Path(cache_dir), writer=_slow_writer(Path(marker)))
    _load(Path(folder), TRANSFORMER_INT8, cache)


def test_a_write_killed_midway_leaves_no_entry_and_the_next_load_works(tiny_flux, tmp_path, quantize_calls):
    cache_dir, marker = tmp_path / "cache", tmp_path / "written"
    child = multiprocessing.get_context("spawn").Process(target=_child_load, args=(tiny_flux, cache_dir, marker))
    child.start()
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and child.is_alive():
        time.sleep(0.05)
    assert marker.exists(), "the child never reached its write"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert _entries(cache_dir) == [], "a killed write must not leave an entry"
    assert any(p.name.startswith(".tmp-") for p in (cache_dir / disk_cache.STORE).iterdir())  # unpublished

    result = _load(tiny_flux, TRANSFORMER_INT8, DiskCache(cache_dir))
    assert _rows(result)["transformer"]["disk_cache"] == "written"
    assert quantize_calls["quantize"] == 1
    (entry,) = _entries(cache_dir)
    check_entry(entry, entry.name)
    assert not any(p.name.startswith(".tmp-") for p in (cache_dir / disk_cache.STORE).iterdir())


def _truncate(entry: Path):
    weights = entry / "diffusion_pytorch_model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)


def _delete_weights(entry: Path):
    (entry / "diffusion_pytorch_model.safetensors").unlink()


def _scramble_header(entry: Path):
    weights = entry / "diffusion_pytorch_model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(8)
        f.write(b"}{not json")


def _drop_manifest(entry: Path):
    (entry / ENTRY_FILE).unlink()


@pytest.mark.parametrize(
    "damage",
    [_truncate, _delete_weights, _scramble_header, _drop_manifest],
    ids=["truncated", "missing-file", "bad-header", "no-manifest"],
)
def test_a_broken_entry_is_deleted_rebuilt_and_reported(tiny_flux, tmp_path, quantize_calls, damage):
    cache = DiskCache(tmp_path / "cache")
    image = _image(_load(tiny_flux, TRANSFORMER_INT8, cache))
    (entry,) = _entries(tmp_path / "cache")
    damage(entry)
    result = _load(tiny_flux, TRANSFORMER_INT8, cache)
    assert quantize_calls["quantize"] == 2
    assert _rows(result)["transformer"]["disk_cache"] == "written"
    assert any("broken" in n and "rebuilt" in n for n in result.notes), result.notes
    assert "broken" in result.table
    check_entry(entry, entry.name)  # whole again
    assert torch.equal(_image(result), image)


def _concurrent_child(folder, cache_dir, queue):
    def slow(module, dest):  # widen the window in which the other load could interleave
        time.sleep(1.0)
        save_component(module, dest)

    result = _load(Path(folder), TRANSFORMER_INT8, DiskCache(Path(cache_dir), writer=slow))
    queue.put(_rows(result)["transformer"]["disk_cache"])


def test_two_concurrent_loads_make_one_entry(tiny_flux, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_concurrent_child, args=(tiny_flux, tmp_path / "cache", queue)) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(300)
    assert [c.exitcode for c in children] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in children) == ["read", "written"]
    (entry,) = _entries(tmp_path / "cache")
    check_entry(entry, entry.name)


def test_size_limit_evicts_the_least_recently_used(tiny_flux, tmp_path):
    folder = tmp_path / "cache"
    specs = {
        q: G("torchao", q, components=["transformer"])
        for q in ("int8_weight_only", "float8_weight_only", "int8_dynamic")
    }
    probe = DiskCache(tmp_path / "probe")
    _load(tiny_flux, specs["int8_weight_only"], probe)
    one = probe.entries()[0]["bytes"]
    cache = DiskCache(folder, limit=int(one * 2.5))
    keys = {}
    for q in ("int8_weight_only", "float8_weight_only"):
        _load(tiny_flux, specs[q], cache)
        keys[q] = {e["key"] for e in cache.entries()} - set(keys.values())
        keys[q] = keys[q].pop()
        time.sleep(0.05)
    assert _rows(_load(tiny_flux, specs["int8_weight_only"], cache))["transformer"]["disk_cache"] == "read"
    time.sleep(0.05)
    _load(tiny_flux, specs["int8_dynamic"], cache)
    left = {e["key"] for e in cache.entries()}
    assert keys["int8_weight_only"] in left, "the entry just used must stay"
    assert keys["float8_weight_only"] not in left, "the least recently used entry must go"
    assert len(left) == 2
    assert sum(e["bytes"] for e in cache.entries()) <= cache.limit


def test_a_component_larger_than_the_limit_is_not_cached(tiny_flux, tmp_path):
    result = _load(tiny_flux, TRANSFORMER_INT8, DiskCache(tmp_path / "cache", limit=1000))
    assert _rows(result)["transformer"]["disk_cache"] == "not cached"
    assert "larger than the cache limit" in _rows(result)["transformer"]["disk_cache_reason"]
    assert _entries(tmp_path / "cache") == []


@pytest.mark.parametrize("raw,expected", [("", 64.0), ("2.5", 2.5), ("lots", 64.0), ("-1", 64.0), ("nan", 64.0)])
def test_limit_comes_from_the_environment_when_used(monkeypatch, caplog, raw, expected):
    monkeypatch.setenv(disk_cache.ENV_LIMIT_GB, raw)
    with caplog.at_level(logging.WARNING, logger="pipequant.disk_cache"):
        assert disk_cache.limit_bytes() == int(expected * 1024**3)
    assert ("is not a size in GB" in caplog.text) == (raw not in ("", "2.5"))


def test_a_full_disk_still_loads_without_caching_and_says_why(tiny_flux, tmp_path, quantize_calls):
    def full(module, folder):
        (Path(folder) / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cache = DiskCache(tmp_path / "cache", writer=full)
    result = _load(tiny_flux, TRANSFORMER_INT8, cache)
    row = _rows(result)["transformer"]
    assert row["disk_cache"] == "not cached" and "full" in row["disk_cache_reason"]
    assert any("transformer not cached" in n and "full" in n for n in result.notes)
    assert row["quantized_layers"] > 0
    store = tmp_path / "cache" / disk_cache.STORE
    assert sorted(p.name for p in store.iterdir()) == sorted([disk_cache.MARKER_FILE, next(store.glob("*.lock")).name])
    assert torch.isfinite(_image(result)).all()


def _tmpfs(path: Path, size: str):
    """Mount a tmpfs of `size` at `path` (root only); skip where mounting is not allowed."""
    path.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=True)  # a loaded entry may still be mapped


@pytest.fixture
def tiny_tmpfs(tmp_path):
    yield from _tmpfs(tmp_path / "tmpfs", "2m")


@pytest.fixture
def roomy_tmpfs(tmp_path):
    yield from _tmpfs(tmp_path / "tmpfs", "128m")  # room for the cache's free-space margin


def test_a_really_full_small_disk_still_loads(tiny_flux, tiny_tmpfs):
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (1900 * 1024))
    result = _load(tiny_flux, INT8, DiskCache(tiny_tmpfs / "cache"))
    for name in ("transformer", "text_encoder_2"):
        row = _rows(result)[name]
        assert row["disk_cache"] == "not cached" and "free" in row["disk_cache_reason"], row
    assert _entries(tiny_tmpfs / "cache") == []


def test_a_read_only_cache_folder_still_loads_and_says_why(tiny_flux, tmp_path):
    folder = tmp_path / "cache"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder.mkdir()
        if (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8m,ro", "tmpfs", str(folder)], capture_output=True, check=False
            ).returncode
            != 0
        ):
            pytest.skip("root, and cannot mount a read-only tmpfs: permissions do not apply")
    try:
        result = _load(tiny_flux, TRANSFORMER_INT8, DiskCache(folder))
        row = _rows(result)["transformer"]
        assert row["disk_cache"] == "not cached" and "not writable" in row["disk_cache_reason"], row
        assert any("not writable" in n for n in result.notes)
        assert torch.isfinite(_image(result)).all()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_entries_of_a_remounted_read_only_cache_are_still_read(tiny_flux, roomy_tmpfs, quantize_calls):
    cache = DiskCache(roomy_tmpfs)
    assert _rows(_load(tiny_flux, TRANSFORMER_INT8, cache))["transformer"]["disk_cache"] == "written"
    subprocess.run(["mount", "-o", "remount,ro", str(roomy_tmpfs)], check=True)
    try:
        result = _load(tiny_flux, TRANSFORMER_INT8, cache)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(roomy_tmpfs)], check=True)
    assert _rows(result)["transformer"]["disk_cache"] == "read"
    assert quantize_calls["quantize"] == 1


def test_what_is_not_cached_and_why(tiny_flux, flux_gguf):
    spec = ComponentMap.make(
        {
            "transformer": G("gguf", "from_file", gguf_file=flux_gguf.name),
            "text_encoder_2": G("quanto", "int8"),
            "text_encoder": G("torchao", "int8_weight_only"),
        }
    )
    plan = plan_load(tiny_flux, spec, device="cpu", gguf_roots=[flux_gguf.parent])
    rows = plan.components
    assert "own file" in not_cacheable(rows["transformer"]) or "nothing to cache" in not_cacheable(rows["transformer"])
    assert not_cacheable(rows["text_encoder_2"]) == "quanto cannot save a transformers model"
    assert not_cacheable(rows["text_encoder"]) is None
    assert not_cacheable(rows["vae"]).startswith("nothing to cache")


def test_a_gguf_load_writes_nothing(tiny_flux, flux_gguf, tmp_path):
    spec = ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file=flux_gguf.name)})
    result = _load(tiny_flux, spec, DiskCache(tmp_path / "cache"), gguf_roots=[flux_gguf.parent])
    assert _rows(result)["transformer"]["disk_cache"] is None
    assert not [n for n in result.notes if "disk cache" in n]
    assert not (tmp_path / "cache").exists()


def test_entries_are_never_model_names(tiny_flux, tmp_path):
    from pipequant.resolver.files.roots import list_pipelines

    cache = DiskCache(tmp_path / "models" / "cache")
    _load(tiny_flux, TRANSFORMER_INT8, cache)
    (entry,) = _entries(cache.folder)
    assert not (entry / "model_index.json").exists()
    assert list_pipelines([tmp_path / "models"]) == []
    assert not any(p.suffix in (".bin", ".pt") for p in entry.iterdir())


def test_clear_and_older_than(tiny_flux, tmp_path):
    cache = DiskCache(tmp_path / "cache")
    _load(tiny_flux, INT8, cache)
    old, new = cache.entries()
    stale = time.time() - 10 * 86400
    os.utime(Path(old["path"]) / ENTRY_FILE, (stale, stale))
    assert [e["key"] for e in cache.clear(older_than_days=5)] == [old["key"]]
    assert [e["key"] for e in cache.entries()] == [new["key"]]
    assert [e["key"] for e in cache.clear()] == [new["key"]]
    assert cache.entries() == []
