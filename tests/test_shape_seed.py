"""The first plan on a machine answers at once: the shape facts of FLUX.1-dev, SD3.5 Large and SDXL
ship with the pack (resolver/data/shape_seed.json), so a fresh process with an empty shape store plans
them without importing torch or building a model; the shipped facts are the ones the installed
libraries compute, and they are used only for the configs and versions they were computed for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import forget_shape_facts, shape_facts

from pipequant.resolver.constants import LOAD_DTYPES
from pipequant.resolver.decide import footprint
from pipequant.resolver.files import shape_seed, shape_store
from pipequant.resolver.files.inspect_model import _freeze, inspect_model, thaw
from pipequant.resolver.known import catalogue
from pipequant.testing.hollow import HUB_CLIP_L, HUB_T5_XXL

REGENERATE = "regenerate it: python -m pipequant.testing.shape_seed"


@pytest.fixture
def seed_on(monkeypatch):
    with shape_facts(monkeypatch, "off", seed="on"):
        yield


def _seed_matches_this_install():
    if not shape_seed._matches(shape_seed.CORE):
        pytest.skip(f"the seed was written for {shape_seed._seed().get('versions')}: {REGENERATE}")


def _shape(info):
    return footprint._Shape(info).key


def test_the_shipped_facts_are_what_the_installed_libraries_compute(flux_dev, seed_on, monkeypatch):
    """Every fact the seed holds for FLUX.1-dev's components, computed again from the libraries."""
    _seed_matches_this_install()
    model = inspect_model(flux_dev)
    compared = 0
    for info in model.components.values():
        if not info.is_module:
            continue
        assert shape_seed.get(_shape(info), "layout") is not None, f"{info.name} not in the seed: {REGENERATE}"
        monkeypatch.setenv(shape_seed.ENV, "off")
        forget_shape_facts()
        truth = {"layout": footprint.layout(info)}
        for dtype in LOAD_DTYPES:
            truth[f"fp32:{dtype}"] = footprint.fp32_names(info, dtype)
        monkeypatch.setenv(shape_seed.ENV, "on")
        forget_shape_facts()
        assert footprint.layout(info) == truth["layout"], info.name
        for dtype in LOAD_DTYPES:
            assert footprint.fp32_names(info, dtype) == truth[f"fp32:{dtype}"], (info.name, dtype)
        for name in catalogue.backend_names():
            backend = catalogue.get_backend(name)
            if info.library not in backend.libraries or backend.needs_file:
                continue
            for quant in backend.quant_types[:2]:  # two per backend keeps this test under 30 s
                shipped = shape_seed.get(_shape(info), f"quantized:{name}:{quant.name}:()")
                if shipped is None:
                    continue
                monkeypatch.setenv(shape_seed.ENV, "off")
                forget_shape_facts()
                assert footprint.quantized_weights(info, name, quant.name, ()) == frozenset(shipped), (
                    info.name,
                    name,
                    quant.name,
                    REGENERATE,
                )
                monkeypatch.setenv(shape_seed.ENV, "on")
                compared += 1
    assert compared >= 20


def test_a_fresh_process_with_an_empty_store_plans_flux_without_torch(flux_dev, tmp_path, seed_on):
    """`pipequant plan` in a new process, nothing stored yet: no torch, diffusers or transformers
    imported, and the plan is the one the libraries give (computed here with the seed off)."""
    _seed_matches_this_install()
    probe = (
        "import sys, json; from pipequant.runner.cli import main; "
        f"code = main(['plan', {flux_dev.name!r}, '--models', {str(flux_dev.parent)!r}, '--budget', '16', '--json']); "
        "print('@@', json.dumps([code] + [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]))"
    )
    env = {**os.environ, shape_store.ENV: str(tmp_path / "empty"), shape_seed.ENV: "on"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    lines = out.stdout.splitlines()
    assert json.loads(next(x for x in lines if x.startswith("@@"))[2:]) == [0], out.stderr[-2000:]
    from_seed = json.loads(next(x for x in lines if x.startswith("{")))

    env = {**os.environ, shape_store.ENV: "off", shape_seed.ENV: "off"}
    cli = [sys.executable, "-m", "pipequant", "plan", flux_dev.name, "--models", str(flux_dev.parent)]
    out = subprocess.run([*cli, "--budget", "16", "--json"], capture_output=True, text=True, env=env, timeout=600)
    from_libraries = json.loads(out.stdout)
    for plan in (from_seed, from_libraries):
        plan.pop("device")  # free memory moves between the two runs
    assert from_seed == from_libraries


def test_the_hub_config_and_one_listing_every_default_find_the_same_facts(flux_dev, seed_on):
    _seed_matches_this_install()
    info = next(i for i in inspect_model(flux_dev).components.values() if i.name == "transformer")
    library, class_name, config = _shape(info)
    listed = dict(thaw(config))
    assert "axes_dims_rope" in listed  # the hollow config lists this default
    hub = {k: v for k, v in listed.items() if k != "axes_dims_rope"}
    hub |= {"_class_name": class_name, "_diffusers_version": "0.30.0.dev0"}
    found = shape_seed.get((library, class_name, _freeze(hub)), "layout")
    assert found is not None and found == shape_seed.get((library, class_name, config), "layout")
    # A field that changes the model finds nothing: the usual way computes it.
    assert shape_seed.get((library, class_name, _freeze(listed | {"num_layers": 18})), "layout") is None
    assert shape_seed.get(("diffusers", "NoSuchModel", config), "layout") is None


@pytest.mark.parametrize("name, hub", [("text_encoder_2", HUB_T5_XXL), ("text_encoder", HUB_CLIP_L)])
def test_the_hubs_text_encoder_configs_find_the_shipped_facts(flux_dev, seed_on, name, hub):
    _seed_matches_this_install()
    info = next(i for i in inspect_model(flux_dev).components.values() if i.name == name)
    library, class_name, config = _shape(info)
    assert thaw(config) != {k: v for k, v in hub.items() if not k.startswith("_")}
    found = shape_seed.get((library, class_name, _freeze(hub)), "layout")
    assert found is not None and found == shape_seed.get((library, class_name, config), "layout")
    # A field the model is built from still tells them apart.
    assert shape_seed.get((library, class_name, _freeze(hub | {"vocab_size": 32000})), "layout") is None


def test_facts_from_other_library_versions_are_not_used(flux_dev, seed_on, monkeypatch):
    _seed_matches_this_install()
    info = next(i for i in inspect_model(flux_dev).components.values() if i.name == "transformer")
    key = _shape(info)
    assert shape_seed.get(key, "quantized:torchao:int8_weight_only:()") is not None
    recorded = shape_seed._seed()["versions"]
    monkeypatch.setitem(recorded, "torchao", "torchao=0.0.1")
    shape_seed._matches.cache_clear()
    assert shape_seed.get(key, "quantized:torchao:int8_weight_only:()") is None  # the backend's own version
    assert shape_seed.get(key, "layout") is not None  # torchao does not decide the layout
    monkeypatch.setitem(recorded, "diffusers", "diffusers=0.1.0")
    shape_seed._matches.cache_clear()
    assert shape_seed.get(key, "layout") is None
    monkeypatch.setitem(recorded, "diffusers", shape_store.versions()["diffusers"])
    monkeypatch.setitem(recorded, "torchao", shape_store.versions()["torchao"])
    shape_seed._matches.cache_clear()
    monkeypatch.setenv(shape_seed.ENV, "off")
    assert shape_seed.get(key, "layout") is None


def test_the_seed_names_how_it_was_written():
    seed = shape_seed._seed()
    assert seed, f"resolver/data/shape_seed.json is missing or unreadable: {REGENERATE}"
    assert seed["command"].startswith("python -m pipequant.testing.shape_seed")
    assert seed["versions"]["diffusers"] and seed["versions"]["torch"] and seed["written"]
    assert {"diffusers.FluxTransformer2DModel", "transformers.T5EncoderModel"} <= set(seed["defaults"])
