"""The planner answers at once: the facts a plan needs from a model's shapes (layout, float32-kept
names, what each quantizer quantizes) are kept on disk per (library, class, config, library versions),
so a fresh process plans a full-size FLUX.1-dev without importing torch or building a model; and a
second folder with the same architecture builds nothing in a warm process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from helpers import forget_shape_facts, shape_facts

from pipequant.resolver import BackendSpec
from pipequant.resolver.decide import footprint
from pipequant.resolver.decide.prepare import prepare
from pipequant.resolver.files import shape_store

SPEC = BackendSpec.make("torchao", "int8_weight_only", components=["transformer", "text_encoder_2"])


@pytest.fixture
def store(monkeypatch, tmp_path):
    with shape_facts(monkeypatch, str(tmp_path / "shapes"), seed="off"):  # the store, not the shipped facts
        yield tmp_path / "shapes"


def _forbid_builds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("built a model on the meta device")

    monkeypatch.setattr(footprint, "build_on_meta", refuse)


def test_a_fresh_process_estimates_from_the_store_without_building(store, flux_dev, monkeypatch):
    first = prepare(flux_dev, SPEC, device="cpu").estimate()
    assert any(store.glob("*.json"))
    forget_shape_facts()  # what a new process has: nothing in memory
    _forbid_builds(monkeypatch)
    assert prepare(flux_dev, SPEC, device="cpu").estimate() == first


def test_a_second_copy_of_an_architecture_builds_nothing(flux_dev, tmp_path, monkeypatch):
    """Another folder (a copy, a fine-tune) with the same configs: its bookkeeping keys differ."""
    monkeypatch.setenv(shape_store.ENV, "off")
    model = prepare(flux_dev, SPEC, device="cpu").model
    modules = {n: i for n, i in model.components.items() if i.is_module}
    first = {n: footprint.component_bytes(i, "bfloat16") for n, i in modules.items()}
    quantized = {n: footprint.quantized_weights(i, "torchao", "int8_weight_only", ()) for n, i in modules.items()}
    _forbid_builds(monkeypatch)
    for name, info in model.components.items():
        if info.is_module:
            other = dataclasses.replace(
                info, folder=tmp_path / name, config=info.config + (("_name_or_path", "elsewhere"),)
            )
            assert footprint.component_bytes(other, "bfloat16") == first[name]
            assert footprint.quantized_weights(other, "torchao", "int8_weight_only", ()) == quantized[name]


def test_a_broken_store_file_is_ignored_and_rewritten(store, flux_dev):
    first = prepare(flux_dev, SPEC, device="cpu").estimate()
    for path in store.glob("*.json"):
        path.write_text("{not json")
    forget_shape_facts()
    assert prepare(flux_dev, SPEC, device="cpu").estimate() == first
    assert all(json.loads(p.read_text())["facts"] for p in store.glob("*.json"))


def test_plan_in_a_fresh_process_imports_no_heavy_library(store, flux_dev):
    """`python -m pipequant plan` on the hollow FLUX.1-dev: once the store holds its facts, a new
    process plans without importing torch, diffusers or transformers (0.3 s of CPU here, 14 s before)."""
    probe = (
        "import sys, json; from pipequant.runner.cli import main; "
        f"code = main(['plan', {flux_dev.name!r}, '--models', {str(flux_dev.parent)!r}, '--budget', '16', '--json']); "
        "print('@@', json.dumps([code] + [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]))"
    )
    env = {**os.environ, shape_store.ENV: str(store)}
    runs = []
    for _ in range(2):  # the first fills the store, the second reads it
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
        line = next(x for x in out.stdout.splitlines() if x.startswith("@@"))
        runs.append(json.loads(line[2:]))
    assert runs[0][0] == 0 and runs[1] == [0], runs
