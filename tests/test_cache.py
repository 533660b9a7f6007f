"""The component cache: changing one component's plan reloads that component only."""
from __future__ import annotations

import importlib

import torch

from pipequant.resolver import BackendSpec, ComponentCache, ComponentMap, load

G = BackendSpec.make
load_module = importlib.import_module("pipequant.resolver.load")  # the module, not the function


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
    first = ComponentMap.make({"transformer": G("torchao", "int8_weight_only"),
                               "text_encoder_2": G("torchao", "int8_weight_only")})
    second = ComponentMap.make({"transformer": G("torchao", "int8_weight_only"),
                                "text_encoder_2": G("quanto", "int8")})
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


def test_cache_budget_is_read_when_used_and_a_malformed_one_falls_back(monkeypatch, caplog):
    """A bad PIPEQUANT_CACHE_GB must not stop the pack from importing: it is parsed when the cache
    is used, with a warning, and the default applies."""
    import logging

    from pipequant.resolver import cache as cache_module

    cache = ComponentCache()
    monkeypatch.setenv("PIPEQUANT_CACHE_GB", "0.5")
    assert cache.budget_bytes == 1024**3 // 2
    monkeypatch.setenv("PIPEQUANT_CACHE_GB", "lots")
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        assert cache.budget_bytes == int(cache_module.DEFAULT_GB * 1024**3)
    assert "PIPEQUANT_CACHE_GB='lots'" in caplog.text
    monkeypatch.delenv("PIPEQUANT_CACHE_GB")
    assert cache.budget_bytes == int(cache_module.DEFAULT_GB * 1024**3)
