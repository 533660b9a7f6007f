"""Shared fixtures: tiny pipelines built once per session (offline, random weights)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from pipequant import testing as tiny

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

# The on-disk cache of quantized components is on by default for users; the suite turns it off so
# that no test reads another test's (or another checkout's) entries from ~/.cache. Tests of the
# cache point PIPEQUANT_DISK_CACHE at their own temp folder. Subprocesses inherit this.
os.environ["PIPEQUANT_DISK_CACHE"] = "off"
# Likewise the measured-quality figures (Plan Quality Check): the planner reads them, so a user's
# ~/.cache/pipequant/quality must not change what the planner tests see.
os.environ["PIPEQUANT_QUALITY_CACHE"] = "off"
# Likewise the on-disk store of shape facts (resolver/files/shape_store.py): a test that changes how a
# quantizer answers must not get an answer stored by an earlier run. Its own tests point it at a temp folder.
os.environ["PIPEQUANT_SHAPE_CACHE"] = "off"
# The facts shipped with the pack (resolver/files/shape_seed.py) stay on, as users have them: they are
# what the libraries answer at these versions (tests/test_shape_seed.py), and a test of the store or
# of a changed quantizer turns them off itself.


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
def families_root(tmp_path_factory) -> Path:
    """Session folder holding the tiny pipeline of each family (testing/families.py)."""
    return tmp_path_factory.mktemp("families")


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
def hollow_root(tmp_path_factory) -> Path:
    """Hollow full-size pipelines (real configs, sparse safetensors: headers only)."""
    return tmp_path_factory.mktemp("hollow")


@pytest.fixture(scope="session")
def flux_dev(hollow_root) -> Path:
    from pipequant.testing import hollow

    return hollow.ensure_hollow("flux-dev", hollow_root)


@pytest.fixture(scope="session")
def sdxl(hollow_root) -> Path:
    from pipequant.testing import hollow

    return hollow.ensure_hollow("sdxl", hollow_root)


@pytest.fixture(scope="session")
def flux_gguf(models_root, tiny_flux) -> Path:
    """Q8_0 GGUF of the tiny FLUX transformer (diffusers tensor names)."""
    out = models_root / "gguf" / "tiny-flux-transformer-Q8_0.gguf"
    if not out.exists():
        tiny.write_gguf(tiny_flux, "transformer", out, "Q8_0")
    return out


@pytest.fixture
def bnb_cpu():
    """Let diffusers' bitsandbytes 4-bit and 8-bit quantizers load on CPU (undone afterwards)."""
    with tiny.bnb_on_cpu():
        yield
