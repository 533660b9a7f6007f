"""SDNQ loads and samples the tiny pipelines on CPU, in global and granular mode (skipped when
the optional `sdnq` package, GPL-3.0, is not installed)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

# SDNQ compiles its dequantization with torch.compile by default: minutes on a 2-core CPU for a
# tiny model. Eager is what this test is about (set before sdnq is first imported).
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")

from pipequant.resolver import BackendSpec, ComponentCache, ComponentMap
from pipequant.resolver.keep import load
from pipequant.resolver.known.catalogue import get_backend
from pipequant.resolver.run.sample import generate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sdnq") is None, reason="sdnq is not installed (optional, GPL-3.0: pip install sdnq)"
)
G = BackendSpec.make


def _sample(result):
    image = generate(result.pipeline, prompt="a cat", steps=2, width=32, height=32, seed=1, max_sequence_length=32)
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(image).all()


def test_sdnq_is_in_the_catalogue_when_installed():
    backend = get_backend("sdnq")
    assert backend is not None and backend.installed()
    assert {"int8", "int4", "uint4"} <= {q.name for q in backend.quant_types}
    assert "GPL-3.0" in backend.describe()["install"]


def test_global_sdnq_int8_loads_and_samples(tiny_flux):
    with torch.inference_mode():
        result = load(tiny_flux, G("sdnq", "int8"), device="cpu", cache=ComponentCache())
        rows = {r["component"]: r for r in result.rows}
        for name in ("transformer", "text_encoder", "text_encoder_2"):  # diffusers and transformers models
            assert rows[name]["quant_type"] == "int8" and rows[name]["backend"] == "sdnq"
            assert rows[name]["bytes"] < 0.75 * rows[name]["bytes_before"], rows[name]
            assert rows[name]["quantized_layers"] > 0, rows[name]  # SDNQ keeps plain Linear classes
        assert rows["vae"]["action"] == "keep"
        _sample(result)


def test_granular_sdnq_with_torchao_loads_and_samples(tiny_flux):
    spec = ComponentMap.make({"transformer": G("sdnq", "uint4"), "text_encoder_2": G("torchao", "int8_weight_only")})
    with torch.inference_mode():
        result = load(tiny_flux, spec, device="cpu", cache=ComponentCache())
        rows = {r["component"]: r for r in result.rows}
        assert rows["transformer"]["backend"] == "sdnq" and rows["transformer"]["quant_type"] == "uint4"
        assert rows["transformer"]["bytes"] < 0.6 * rows["transformer"]["bytes_before"], rows["transformer"]
        assert rows["text_encoder_2"]["backend"] == "torchao"
        assert rows["text_encoder"]["action"] == "keep"
        _sample(result)
