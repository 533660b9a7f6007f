"""The disk cache touches only what it wrote, never follows a planted link, and trusts no entry file.

Issue 22, items 1, 8 and 9: a folder named as the cache that holds models or someone's files is
refused as the cache's folder and nothing in it is deleted (by a load's eviction or by
`python -m pipequant cache clear`); only entries with the cache's own manifest, in its marked
store, are listed, evicted or cleared, and the rest is reported; a `<key>.lock` link or FIFO never
makes a load create or wait on anything outside the cache; an entry whose config.json was edited
(an absurd layer count, or a plausible change that moves the output) is evicted and rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep import disk_cache
from pipequant.resolver.keep.disk_cache import ENTRY_FILE, DiskCache, entry_key
from pipequant.resolver.keep.load import load, plan_load
from pipequant.resolver.run.sample import generate
from pipequant.runner.cli import main

TRANSFORMER_INT8 = BackendSpec.make("torchao", "int8_weight_only", components=["transformer"])
TRANSFORMER_FP8 = BackendSpec.make("torchao", "float8_weight_only", components=["transformer"])


def _load(folder, spec, cache):
    with torch.inference_mode():
        return load(folder, spec, device="cpu", cache=None, disk_cache=cache)


def _row(result, name="transformer") -> dict:
    return next(r for r in result.rows if r["component"] == name)


def _image(result):
    with torch.inference_mode():
        return generate(result.pipeline, prompt="a cat", steps=1, width=32, height=32, seed=3, max_sequence_length=32)


def _tree(folder: Path) -> dict:
    """Every file under `folder` with its bytes: what must come through untouched."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _store(cache: DiskCache) -> Path:
    return getattr(cache, "store", cache.folder)  # where the entries live (the folder itself, before the fix)


def _entry_folders(cache: DiskCache) -> list[Path]:
    return [Path(e["path"]) for e in cache.entries()]


@pytest.fixture
def user_folder(tmp_path, tiny_flux) -> Path:
    """A folder holding a user's notes and a pipeline: someone else's data."""
    folder = tmp_path / "shared"
    (folder / "precious").mkdir(parents=True)
    (folder / "precious" / "notes.txt").write_text("years of work")
    shutil.copytree(tiny_flux, folder / "tiny-flux")
    return folder


# -- item 1: the cache deletes only what it wrote -----------------------------------------------
def test_cli_clear_on_a_foreign_folder_deletes_nothing_and_says_what_it_left(user_folder, capsys):
    before = _tree(user_folder)
    assert main(["cache", "clear", "--folder", str(user_folder)]) == 0
    out = capsys.readouterr().out
    assert _tree(user_folder) == before
    assert "removed 0 entries" in out
    assert "left alone" in out and "precious" in out and "tiny-flux" in out, out


def test_a_load_with_a_models_folder_as_the_cache_deletes_nothing(user_folder, tmp_path):
    """Pointed at a models folder, with a limit the folder's own contents exceed: a load must not
    prune the folder (it deleted the other model and the one being loaded)."""
    before = _tree(user_folder)
    result = _load(user_folder / "tiny-flux", TRANSFORMER_INT8, DiskCache(user_folder, limit=4 * 1024**2))
    assert _tree(user_folder) == before
    row = _row(result)
    assert row["disk_cache"] == "not cached"
    assert "did not write" in row["disk_cache_reason"] and "precious" in row["disk_cache_reason"], row
    assert any("did not write" in n for n in result.notes)
    assert row["quantized_layers"] > 0  # the load itself is unharmed


def test_eviction_and_clear_touch_only_entries_with_the_caches_manifest(tiny_flux, tmp_path, capsys):
    cache = DiskCache(tmp_path / "cache")
    _load(tiny_flux, TRANSFORMER_INT8, cache)
    (mine,) = _entry_folders(cache)
    store = _store(cache)
    # Beside it: a folder named like an entry with a copied manifest that lacks the owner mark, a
    # plain folder, a file, and a big blob (a shared folder holding more than the limit).
    forged = store / ("f" * 32)
    shutil.copytree(mine, forged)
    manifest = json.loads((forged / ENTRY_FILE).read_text())
    manifest.pop("owner", None)
    manifest["key"] = forged.name
    (forged / ENTRY_FILE).write_text(json.dumps(manifest))
    (store / "notes").mkdir()
    (store / "notes" / "todo.txt").write_text("keep me")
    (store / "readme.txt").write_text("keep me too")
    with open(store / "blob.bin", "wb") as f:
        f.truncate(64 * 1024**2)  # sparse: 64 MB on paper
    foreign = {p.name for p in store.iterdir()} - {
        mine.name,
        f"{mine.name}.lock",
        getattr(disk_cache, "MARKER_FILE", ""),
    }
    before = {name: _tree(store / name) if (store / name).is_dir() else (store / name).stat() for name in foreign}

    limit = int(cache.entries()[0]["bytes"] * 2.5)
    small = DiskCache(tmp_path / "cache", limit=limit)
    assert _row(_load(tiny_flux, TRANSFORMER_FP8, small))["disk_cache"] == "written"
    assert len(small.entries()) == 2, "the cache's own entries fit its limit: nothing of its own to evict"
    assert {Path(e["path"]).name for e in small.entries()} >= {mine.name}
    assert {str(store / n) for n in foreign} <= set(small.skipped())

    assert main(["cache", "clear", "--folder", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries" in out and "left alone" in out and "notes" in out, out
    assert small.entries() == []
    after = {name: _tree(store / name) if (store / name).is_dir() else (store / name).stat() for name in foreign}
    assert after == before


def test_a_store_without_the_marker_is_not_the_caches(tiny_flux, tmp_path):
    """Someone's folder that happens to carry the store's name is refused, not written into."""
    folder = tmp_path / "cache"
    store = folder / disk_cache.STORE
    store.mkdir(parents=True)
    (store / "mine.txt").write_text("not a cache")
    result = _load(tiny_flux, TRANSFORMER_INT8, DiskCache(folder))
    assert _row(result)["disk_cache"] == "not cached"
    assert "marker" in _row(result)["disk_cache_reason"] or disk_cache.MARKER_FILE in _row(result)["disk_cache_reason"]
    assert [p.name for p in store.iterdir()] == ["mine.txt"]


# -- item 8: a planted lock never leads outside ---------------------------------------------------
def _plant_link(path: Path, target: Path) -> None:
    path.symlink_to(target)


def _plant_fifo(path: Path, target: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize("plant", [_plant_link, _plant_fifo], ids=["symlink", "fifo"])
def test_a_planted_lock_never_creates_a_file_outside_nor_hangs(tiny_flux, tmp_path, plant):
    cache = DiskCache(tmp_path / "cache", lock_wait=5.0)
    _load(tiny_flux, TRANSFORMER_FP8, cache)  # the cache exists, with its store
    plan = plan_load(tiny_flux, TRANSFORMER_INT8, device="cpu")
    key = entry_key(plan, plan.components["transformer"])
    outside = tmp_path / "outside" / "created-by-the-cache"
    outside.parent.mkdir()
    plant(_store(cache) / f"{key}.lock", outside)

    start = time.monotonic()
    result = _load(tiny_flux, TRANSFORMER_INT8, cache)
    assert time.monotonic() - start < 60
    assert not outside.exists(), "the load created a file through the planted lock"
    row = _row(result)
    assert row["disk_cache"] == "not cached" and row["quantized_layers"] > 0, row
    assert "link" in row["disk_cache_reason"] or "regular file" in row["disk_cache_reason"], row


# -- item 9: an entry's config.json is not trusted ------------------------------------------------
def _edit_config(entry: Path, edit, update_manifest: bool) -> None:
    path = entry / "config.json"
    text = path.read_text()
    new = edit(text)
    assert new != text
    path.write_text(new)
    if update_manifest:  # a forger who also rewrites the manifest's record of the file
        import hashlib

        manifest = json.loads((entry / ENTRY_FILE).read_text())
        meta = manifest["files"]["config.json"]
        meta["size"] = len(new.encode())
        if "sha256" in meta:
            meta["sha256"] = hashlib.sha256(new.encode()).hexdigest()
        (entry / ENTRY_FILE).write_text(json.dumps(manifest))


def _huge(text: str) -> str:
    """10^8 single blocks, at the file's old size (the spaces after the value are dropped)."""
    data = json.loads(text)
    data["num_single_layers"] = 10**8
    new = json.dumps(data)
    assert len(new) <= len(text)
    return new + " " * (len(text) - len(new))


def _rope(text: str) -> str:
    """A plausible edit that still loads and moves the output: the rope axes reordered."""
    data = json.loads(text)
    assert data["axes_dims_rope"] == [16, 24, 24]
    return text.replace(json.dumps(data["axes_dims_rope"], indent=2), json.dumps([24, 16, 24], indent=2)).replace(
        "16,\n    24,\n    24", "24,\n    16,\n    24"
    )


@pytest.mark.parametrize(
    "edit,update_manifest",
    [(_huge, False), (_huge, True), (_rope, True)],
    ids=["10^8-layers-same-size", "10^8-layers-manifest-forged", "rope-axes-manifest-forged"],
)
def test_an_edited_entry_config_is_evicted_and_rebuilt(tiny_flux, tmp_path, edit, update_manifest):
    cache = DiskCache(tmp_path / "cache")
    first = _load(tiny_flux, TRANSFORMER_INT8, cache)
    image = _image(first) if edit is _rope else None  # the edit that loads: does the output come back?
    del first
    (entry,) = _entry_folders(cache)
    _edit_config(entry, edit, update_manifest)

    start = time.monotonic()
    result = _load(tiny_flux, TRANSFORMER_INT8, cache)
    assert time.monotonic() - start < 60, "an absurd entry config must be refused, not built"
    assert _row(result)["disk_cache"] == "written", _row(result)
    assert any("broken" in n for n in result.notes), result.notes
    assert json.loads((entry / "config.json").read_text())["axes_dims_rope"] == [16, 24, 24]
    if image is not None:
        assert torch.equal(_image(result), image)


def test_an_entry_loaded_in_another_dtype_than_its_source_is_read(tiny_flux, tmp_path):
    """The config check compares what describes the model, not what a save writes anew (the
    source says bfloat16, an entry written from a float16 load says float16)."""
    spec = BackendSpec.make("torchao", "int8_weight_only", components=["text_encoder_2"])
    cache = DiskCache(tmp_path / "cache")
    with torch.inference_mode():
        first = load(tiny_flux, spec, dtype="float16", device="cpu", cache=None, disk_cache=cache)
        second = load(tiny_flux, spec, dtype="float16", device="cpu", cache=None, disk_cache=cache)
    assert _row(first, "text_encoder_2")["disk_cache"] == "written"
    assert _row(second, "text_encoder_2")["disk_cache"] == "read", second.notes


def _store_is_a_link(folder: Path, outside: Path) -> None:
    folder.mkdir()
    (folder / disk_cache.STORE).symlink_to(outside, target_is_directory=True)


def _marker_is_a_fifo(folder: Path, outside: Path) -> None:
    (folder / disk_cache.STORE).mkdir(parents=True)
    os.mkfifo(folder / disk_cache.STORE / disk_cache.MARKER_FILE)


@pytest.mark.parametrize("plant", [_store_is_a_link, _marker_is_a_fifo], ids=["store-link", "marker-fifo"])
def test_a_planted_store_is_refused_without_touching_anything(tiny_flux, tmp_path, plant):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    folder = tmp_path / "cache"
    plant(folder, outside)
    start = time.monotonic()
    result = _load(tiny_flux, TRANSFORMER_INT8, DiskCache(folder))
    assert time.monotonic() - start < 60
    assert _row(result)["disk_cache"] == "not cached", _row(result)
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]
    assert DiskCache(folder).clear() == []


def test_a_planted_temp_link_is_dropped_not_followed(tiny_flux, tmp_path):
    cache = DiskCache(tmp_path / "cache")
    _load(tiny_flux, TRANSFORMER_FP8, cache)
    plan = plan_load(tiny_flux, TRANSFORMER_INT8, device="cpu")
    key = entry_key(plan, plan.components["transformer"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (_store(cache) / f".tmp-{key}").symlink_to(outside, target_is_directory=True)
    assert _row(_load(tiny_flux, TRANSFORMER_INT8, cache))["disk_cache"] == "written"
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]


def test_entries_of_the_first_layout_are_left_alone_with_a_hint(tiny_flux, tmp_path):
    folder = tmp_path / "cache"
    old_entry = folder / ("a" * 32)
    old_entry.mkdir(parents=True)
    (old_entry / ENTRY_FILE).write_text(json.dumps({"format": 1, "key": old_entry.name}))
    (folder / f"{'a' * 32}.lock").write_text("")
    before = _tree(folder)
    result = _load(tiny_flux, TRANSFORMER_INT8, DiskCache(folder))
    row = _row(result)
    assert row["disk_cache"] == "not cached" and "earlier PipeQuant" in row["disk_cache_reason"], row
    assert DiskCache(folder).clear() == [] and _tree(folder) == before


def test_a_real_t5_xxl_style_config_passes_its_own_check(tmp_path):
    """T5-XXL's config.json (gated-gelu, is_encoder_decoder and use_cache true) comes back from a
    save with derived fields added and the model's own switches flipped: still the same model."""
    from types import SimpleNamespace

    from transformers import T5Config, T5EncoderModel

    source = {
        "architectures": ["T5EncoderModel"],
        "d_ff": 256,
        "d_kv": 64,
        "d_model": 128,
        "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": True,
        "num_heads": 2,
        "num_layers": 2,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 1000,
    }
    T5EncoderModel(T5Config.from_dict(source)).save_pretrained(tmp_path / "entry")
    info = SimpleNamespace(library="transformers", config_dict=source, model_class=lambda: T5EncoderModel)
    disk_cache.check_entry_config(tmp_path / "entry", info)
    edited = json.loads((tmp_path / "entry" / "config.json").read_text())
    edited["d_ff"] = 512
    (tmp_path / "entry" / "config.json").write_text(json.dumps(edited))
    with pytest.raises(disk_cache.BrokenEntry, match="d_ff"):
        disk_cache.check_entry_config(tmp_path / "entry", info)
