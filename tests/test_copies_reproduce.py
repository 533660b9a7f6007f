"""A saved or disk-cached copy reproduces the original bit for bit, and save works from every source.

Issue 22, items 2 and 6. Per backend that saves on CPU: load with the disk cache on (the entry is
written), run, save the pipeline, run again (the shared module must not drift), then load the disk
cache entry and the saved copy: all four images are identical. Saving from a pipeline whose
components came from the disk cache works too (it failed with a bare `NotImplementedError`), and a
save error always names its cause.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")  # eager: compiling takes minutes on CPU (test_sdnq.py)

from pipequant.resolver import BackendSpec, ComponentMap
from pipequant.resolver.keep.disk_cache import DiskCache
from pipequant.resolver.keep.load import load
from pipequant.resolver.keep.save import SaveError, save
from pipequant.resolver.run.sample import generate

G = BackendSpec.make
PLANS = {
    # torchao on the T5 (transformers) failed to save once read from the disk cache
    "bnb-int8-transformer+torchao-t5": ComponentMap.make(
        {"transformer": G("bitsandbytes_8bit", "int8"), "text_encoder_2": G("torchao", "int8_weight_only")}
    ),
    # the reported pair: the T5's bnb layers were repacked in place by the first run
    "quanto-transformer+bnb-nf4-t5": ComponentMap.make(
        {"transformer": G("quanto", "int8"), "text_encoder_2": G("bitsandbytes_4bit", "nf4")}
    ),
    "sdnq-int8": G("sdnq", "int8", components=["transformer"]),  # scales came back rounded to bf16
}


def _load(folder, spec, cache=None):
    with torch.inference_mode():
        return load(folder, spec, device="cpu", cache=None, disk_cache=cache)


def _image(result):
    with torch.inference_mode():
        return generate(result.pipeline, prompt="a cat", steps=1, width=32, height=32, seed=3, max_sequence_length=32)


def _save(result, name, root):
    with torch.inference_mode():  # as the Save node runs, inside ComfyUI
        return save(result, name, [root])


def _disk_states(result) -> dict:
    return {r["component"]: r["disk_cache"] for r in result.rows if r.get("disk_cache")}


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_copy_gives_the_same_image(request, tiny_flux, tmp_path, plan):
    if plan.startswith("sdnq") and importlib.util.find_spec("sdnq") is None:
        pytest.skip("sdnq is not installed (optional, GPL-3.0)")
    if "bnb" in plan:
        request.getfixturevalue("bnb_cpu")
    spec = PLANS[plan]
    cache = DiskCache(tmp_path / "cache")
    original = _load(tiny_flux, spec, cache)
    assert set(_disk_states(original).values()) == {"written"}
    image = _image(original)
    del original

    cached = _load(tiny_flux, spec, cache)
    assert set(_disk_states(cached).values()) == {"read"}
    assert torch.equal(_image(cached), image), "the disk cache entry does not reproduce the original"
    # Saved after a run, from components read from the disk cache (this failed for torchao's T5)
    saved = _save(cached, "copy", tmp_path / "models")
    assert torch.equal(_image(cached), image), "running or saving changed the loaded module"
    del cached

    copy = _load(saved, None)
    assert torch.equal(_image(copy), image), "the saved copy does not reproduce the original"


def test_a_save_error_names_its_cause_and_component(tiny_flux, tmp_path, monkeypatch):
    result = _load(tiny_flux, None)
    encoder = result.pipeline.text_encoder_2

    def bare(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(encoder, "save_pretrained", bare)
    with pytest.raises(SaveError) as exc:
        _save(result, "broken", tmp_path / "models")
    message = str(exc.value)
    assert '"text_encoder_2"' in message, message
    assert "NotImplementedError" in message and "raised in bare()" in message, message
    assert not (tmp_path / "models" / "broken").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == []  # nothing left behind


def test_a_bare_load_error_names_where_it_was_raised(tiny_flux, monkeypatch):
    from diffusers import AutoencoderKL

    from pipequant.resolver.keep.load import LoadError

    def bare(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(lambda cls, *a, **k: bare()))
    with pytest.raises(LoadError) as exc:
        _load(tiny_flux, None)
    assert '"vae"' in str(exc.value) and "raised in bare()" in str(exc.value), str(exc.value)
