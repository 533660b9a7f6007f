"""Shared fixtures: tiny pipelines built once per session (offline, random weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipequant.resolver import tiny


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """Session folder holding every built pipeline and GGUF file."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_flux(models_root) -> Path:
    return tiny.ensure_pipeline("flux", models_root)


@pytest.fixture(scope="session")
def tiny_sd3(models_root) -> Path:
    return tiny.ensure_pipeline("sd3", models_root)


@pytest.fixture(scope="session")
def tiny_sd(models_root) -> Path:
    return tiny.ensure_pipeline("sd", models_root)


@pytest.fixture(scope="session")
def flux_gguf(models_root, tiny_flux) -> Path:
    """Q8_0 GGUF of the tiny FLUX transformer (diffusers tensor names)."""
    out = models_root / "gguf" / "tiny-flux-transformer-Q8_0.gguf"
    if not out.exists():
        tiny.write_gguf(tiny_flux, "transformer", out, "Q8_0")
    return out


@pytest.fixture
def bnb_cpu(monkeypatch):
    """Let diffusers' bitsandbytes 4-bit and 8-bit quantizers load on CPU.

    diffusers refuses without a GPU ("No GPU found. A GPU is needed for quantization.") and
    defaults the device map to the current CUDA device, although bitsandbytes 0.50 runs both
    layer kinds on CPU. Inside this fixture the environment check is a no-op and a missing
    device map becomes ``{"": "cpu"}``; an explicit device map is kept.
    """
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import (
        BnB4BitDiffusersQuantizer,
        BnB8BitDiffusersQuantizer,
    )

    def validate_environment(self, *args, **kwargs):
        return None

    def update_device_map(self, device_map):
        return {"": "cpu"} if device_map is None else device_map

    for cls in (BnB4BitDiffusersQuantizer, BnB8BitDiffusersQuantizer):
        monkeypatch.setattr(cls, "validate_environment", validate_environment)
        monkeypatch.setattr(cls, "update_device_map", update_device_map)
    yield
