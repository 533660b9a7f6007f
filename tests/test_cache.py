"""The component cache: changing one component's plan reloads that component only."""

from __future__ import annotations

import importlib

import pytest
import torch

from pipequant.resolver import BackendSpec, ComponentCache, ComponentMap
from pipequant.resolver.keep import load

G = BackendSpec.make
load_module = importlib.import_module("pipequant.resolver.keep.load")  # the module, not the function


def _count_loads(monkeypatch) -> list[str]:
    loaded: list[str] = []
    real = load_module._load_component

    def counting(plan, row, allow_pickle):
        loaded.append(row.name)
        return real(plan, row, allow_pickle)

    monkeypatch.setattr(load_module, "_load_component", counting)
    return loaded


def test_changing_one_component_reloads_only_it(tiny_flux, monkeypatch):
    loaded = _count_loads(monkeypatch)
    cache = ComponentCache()
    first = ComponentMap.make(
        {"transformer": G("torchao", "int8_weight_only"), "text_encoder_2": G("torchao", "int8_weight_only")}
    )
    second = ComponentMap.make({"transformer": G("torchao", "int8_weight_only"), "text_encoder_2": G("quanto", "int8")})
    with torch.inference_mode():
        a = load(tiny_flux, first, device="cpu", cache=cache)
        assert sorted(loaded) == ["text_encoder", "text_encoder_2", "transformer", "vae"]
        loaded.clear()
        b = load(tiny_flux, second, device="cpu", cache=cache)
    assert loaded == ["text_encoder_2"]
    assert b.pipeline.transformer is a.pipeline.transformer
    assert b.pipeline.text_encoder_2 is not a.pipeline.text_encoder_2
    reused = {r["component"]: r["reused"] for r in b.rows if r["action"] != "not a model"}
    assert reused == {"text_encoder": True, "text_encoder_2": False, "transformer": True, "vae": True}


def test_same_plan_loads_nothing_and_dtype_change_reloads_all(tiny_flux, monkeypatch):
    loaded = _count_loads(monkeypatch)
    cache = ComponentCache()
    spec = G("quanto", "int8", components=["transformer"])
    with torch.inference_mode():
        load(tiny_flux, spec, device="cpu", cache=cache)
        loaded.clear()
        load(tiny_flux, spec, device="cpu", cache=cache)
        assert loaded == []
        load(tiny_flux, spec, dtype="float32", device="cpu", cache=cache)
    assert sorted(loaded) == ["text_encoder", "text_encoder_2", "transformer", "vae"]


def test_touching_a_file_invalidates_that_component(tiny_flux, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_flux, folder)
    loaded = _count_loads(monkeypatch)
    cache = ComponentCache()
    with torch.inference_mode():
        load(folder, None, device="cpu", cache=cache)
        loaded.clear()
        weights = next((folder / "vae").glob("*.safetensors"))
        weights.touch()
        import os

        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
        load(folder, None, device="cpu", cache=cache)
    assert loaded == ["vae"]


def test_budget_evicts_least_recently_used():
    cache = ComponentCache(budget_bytes=100)
    for key, size in (("a", 40), ("b", 40), ("c", 40)):
        cache.put(key, object(), size, {})
    assert cache.keys() == ["b", "c"] and cache.total_bytes == 80
    cache.get("b")  # b is now the most recent
    cache.put("d", object(), 40, {})
    assert cache.keys() == ["b", "d"]
    cache.put("huge", object(), 500, {})  # larger than the budget: kept alone
    assert cache.keys() == ["huge"]
    cache.clear()
    assert len(cache) == 0 and cache.total_bytes == 0


# -- the budget follows the machine; a host can take the memory back -------------------------------
def test_default_budget_is_a_share_of_the_machine(monkeypatch):
    from pipequant.resolver.keep import cache as cache_module
    from pipequant.resolver.known.machine import total_ram_bytes

    monkeypatch.delenv("PIPEQUANT_CACHE_GB", raising=False)
    budget = ComponentCache().budget_bytes
    ram = total_ram_bytes()
    assert 0.5 * ram <= budget <= 0.5 * ram + 0.8 * 256 * 1024**3  # half the RAM, plus any GPU's share
    assert budget != 64 * 1024**3
    monkeypatch.setenv("PIPEQUANT_CACHE_GB", "1.5")
    assert cache_module.budget_from_env() == int(1.5 * 1024**3)
    cache = ComponentCache()  # made before the variable changes: it is read when used
    monkeypatch.setenv("PIPEQUANT_CACHE_GB", "0.5")
    assert cache.budget_bytes == 1024**3 // 2


@pytest.mark.parametrize("raw", ["lots", "-1", "nan", "inf", "12GB"])
def test_malformed_budget_falls_back_with_a_warning(monkeypatch, caplog, raw):
    from pipequant.resolver.keep import cache as cache_module

    monkeypatch.setenv("PIPEQUANT_CACHE_GB", raw)
    with caplog.at_level("WARNING", logger="pipequant"):
        budget = ComponentCache().budget_bytes
    assert budget == cache_module.machine_budget()
    assert f"PIPEQUANT_CACHE_GB={raw!r} is not a size in GB" in caplog.text


def test_release_empties_the_cache_entry_and_every_pipeline_using_it(tiny_flux):
    import gc
    import weakref

    from pipequant.resolver.keep.load import PipelineReleased

    cache = ComponentCache()
    with torch.inference_mode():
        first = load(tiny_flux, None, device="cpu", cache=cache)
        second = load(tiny_flux, None, device="cpu", cache=cache)  # same components, from the cache
    transformer = weakref.ref(first.pipeline.transformer)
    assert second.pipeline.transformer is transformer() and len(cache) == 4
    assert cache.releases(first.folder) == 0

    freed = cache.release(transformer(), "the host needed memory")
    gc.collect()
    assert freed > 0 and len(cache) == 3  # the other components stay cached
    assert transformer() is None, "nothing may keep the released weights alive"
    for result in (first, second):
        with pytest.raises(PipelineReleased, match="unloaded \\(the host needed memory\\); run the workflow again"):
            _ = result.pipeline
    assert cache.releases(first.folder) == 2  # the Load node's IS_CHANGED reads this: the next run reloads

    with torch.inference_mode():
        third = load(tiny_flux, None, device="cpu", cache=cache)
    reused = {r["component"]: r["reused"] for r in third.rows if r["action"] != "not a model"}
    assert reused == {"text_encoder": True, "text_encoder_2": True, "transformer": False, "vae": True}
    assert cache.release_all("unload models") > 0
    assert len(cache) == 0
    with pytest.raises(PipelineReleased):
        _ = third.pipeline
