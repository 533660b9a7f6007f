"""LoRAs a hostile or unlucky user brings (issue 22, items 3, 11, 12): every malformed file refused
with its own code before any weight changes; shapes checked against the layers; a failure while a
LoRA is applied leaves the shared modules as they were or unloads them; the quanto refusal holds
when a shared module already carries the adapter; stacks longer than the adapter limit run;
PIPEQUANT_MAX_LORAS never stops the pack from importing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipequant.resolver.keep.cache import ComponentCache
from pipequant.resolver.keep.load import load
from pipequant.resolver.links.spec import BackendSpec, ComponentMap
from pipequant.resolver.problems import ValidationError
from pipequant.resolver.run import lora
from pipequant.resolver.run.sample import generate
from pipequant.testing import write_kohya_lora, write_peft_lora

SAMPLE = dict(prompt="a cat", steps=1, width=32, height=32, max_sequence_length=32, seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_flux):
    """A good peft LoRA, a good kohya one, and the malformed variants built from them."""
    root = tmp_path_factory.mktemp("hostile-loras")
    good = load_file(str(write_peft_lora(tiny_flux, root / "good.safetensors", text_encoder="text_encoder")))
    kohya = load_file(str(write_kohya_lora(tiny_flux, root / "kohya.safetensors")))
    for seed in (1, 2, 3):
        write_peft_lora(tiny_flux, root / f"stack{seed}.safetensors", seed=seed)
    a = next(k for k in good if k.startswith("transformer.") and k.endswith("lora_A.weight"))
    b = a.replace("lora_A", "lora_B")
    alpha = next(k for k in kohya if k.endswith(".alpha"))
    fan_out, rank = good[b].shape
    fan_in = good[a].shape[1]

    def variant(base, name, **changes):
        tensors = dict(base)
        for key, value in changes.items():
            key = {"A": a, "B": b, "ALPHA": alpha}.get(key, key)
            if value is None:
                tensors.pop(key)
            else:
                tensors[key] = value
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(root / name))

    nan = good[a].clone()
    nan[0, 0] = float("nan")
    inf = good[a].clone()
    inf[0, 0] = float("inf")
    variant(good, "int.safetensors", A=good[a].to(torch.int32))
    variant(good, "bool.safetensors", A=good[a].to(torch.bool))
    variant(good, "no-B.safetensors", B=None)
    variant(good, "no-A.safetensors", A=None)
    variant(good, "rank.safetensors", B=torch.randn(fan_out, rank * 2))
    variant(good, "nan.safetensors", A=nan)
    variant(good, "inf.safetensors", A=inf)
    variant(good, "wide-A.safetensors", A=torch.randn(rank, fan_in * 2))
    variant(good, "tall-B.safetensors", B=torch.randn(fan_out * 2, rank))
    variant(good, "vector-A.safetensors", A=torch.randn(fan_in))
    variant(good, "3d-A.safetensors", A=torch.randn(rank, fan_in, 1))
    variant(good, "rank0.safetensors", A=torch.randn(0, fan_in), B=torch.randn(fan_out, 0))
    variant(good, "alpha-shape.safetensors", **{a.replace("lora_A.weight", "alpha"): torch.ones(3)})
    variant(good, "bias-shape.safetensors", **{b.replace("weight", "bias"): torch.ones(7)})
    variant(good, "dora-shape.safetensors", **{a.replace("lora_A.weight", "lora_magnitude_vector"): torch.ones(5)})
    variant(kohya, "kohya-alpha-shape.safetensors", ALPHA=torch.ones(4))
    variant(kohya, "kohya-no-up.safetensors", **{alpha.replace(".alpha", ".lora_up.weight"): None})
    variant(kohya, "kohya-alpha-nan.safetensors", ALPHA=torch.tensor(float("nan")))
    (root / "empty.safetensors").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def flux(tiny_flux):
    return load(tiny_flux, None, dtype="float32", device="cpu", cache=None)


def run(result):
    with torch.inference_mode():
        lora.activate(result)
        return generate(result.pipeline, **SAMPLE)


def spec(root, name):
    return lora.make_spec(name, [root])


def _shapes(module):
    return {k.replace(".base_layer", ""): tuple(v.shape) for k, v in module.state_dict().items() if "lora" not in k}


MALFORMED = {
    "int.safetensors": "lora_dtype_invalid",
    "bool.safetensors": "lora_dtype_invalid",
    "no-B.safetensors": "lora_pair_missing",
    "no-A.safetensors": "lora_pair_missing",
    "rank.safetensors": "lora_rank_mismatch",
    "nan.safetensors": "lora_nonfinite",
    "inf.safetensors": "lora_nonfinite",
    "wide-A.safetensors": "lora_shape_mismatch",
    "tall-B.safetensors": "lora_shape_mismatch",
    "vector-A.safetensors": "lora_shape_invalid",
    "3d-A.safetensors": "lora_shape_invalid",
    "rank0.safetensors": "lora_malformed",
    "alpha-shape.safetensors": "lora_malformed",
    "bias-shape.safetensors": "lora_shape_mismatch",
    "dora-shape.safetensors": "lora_shape_mismatch",
    "kohya-alpha-shape.safetensors": "lora_malformed",
    "kohya-alpha-nan.safetensors": "lora_nonfinite",
    "kohya-no-up.safetensors": "lora_pair_missing",
    "empty.safetensors": "lora_malformed",
}


def test_every_malformed_lora_gets_its_own_error_and_changes_nothing(flux, files):
    base = run(flux)
    shapes = _shapes(flux.pipeline.transformer)
    for name, code in MALFORMED.items():
        with pytest.raises(ValidationError) as info:
            lora.load_adapter(flux, spec(files, name))
        assert info.value.codes == [code], (name, str(info.value))
        assert name in str(info.value) and info.value.problems[0].input == "lora_name"
        assert lora._loaded(flux.pipeline) == set(), name
        assert _shapes(flux.pipeline.transformer) == shapes, name
    assert torch.equal(run(flux), base)  # the shared modules compute exactly what they did


def test_a_lora_wider_than_the_embedder_never_widens_the_shared_layer(flux, files, tiny_flux):
    """diffusers' FLUX loader widens x_embedder in place for a wider lora_A (Control LoRAs)."""
    embedder = flux.pipeline.transformer.x_embedder
    fan_out, fan_in = embedder.weight.shape
    save_file(
        {
            "transformer.x_embedder.lora_A.weight": torch.randn(4, fan_in * 2),
            "transformer.x_embedder.lora_B.weight": torch.randn(fan_out, 4),
        },
        str(files / "control.safetensors"),
    )
    base = run(flux)
    with pytest.raises(ValidationError) as info:
        lora.load_adapter(flux, spec(files, "control.safetensors"))
    assert info.value.codes == ["lora_shape_mismatch"] and "x_embedder" in str(info.value)
    assert tuple(flux.pipeline.transformer.x_embedder.weight.shape) == (fan_out, fan_in)
    assert torch.equal(run(flux), base)


def test_a_failure_inside_the_load_is_undone(flux, files, monkeypatch):
    base = run(flux)
    original = type(flux.pipeline).load_lora_weights

    def half_way(self, *args, **kwargs):
        original(self, *args, **kwargs)  # injected, then something fails (out of memory, a bug)
        raise RuntimeError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(type(flux.pipeline), "load_lora_weights", half_way)
    with pytest.raises(ValidationError) as info:
        lora.load_adapter(flux, spec(files, "stack1.safetensors"))
    assert info.value.codes == ["lora_load_failed"] and "unchanged" in str(info.value)
    monkeypatch.undo()
    assert lora._loaded(flux.pipeline) == set()
    assert not any("lora" in n for n, _ in flux.pipeline.transformer.named_parameters())
    assert torch.equal(run(flux), base)


def test_a_module_the_failure_changed_is_unloaded_from_the_cache(tiny_flux, files, monkeypatch):
    cache = ComponentCache(budget_bytes=1 << 40)
    result = load(tiny_flux, None, dtype="float32", device="cpu", cache=cache)
    transformer = result.pipeline.transformer
    original = type(result.pipeline).load_lora_weights

    def widens_then_fails(self, *args, **kwargs):
        original(self, *args, **kwargs)
        layer = self.transformer.x_embedder
        layer = getattr(layer, "base_layer", layer)
        layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape[0], layer.weight.shape[1] * 2))
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(type(result.pipeline), "load_lora_weights", widens_then_fails)
    with pytest.raises(ValidationError) as info:
        lora.load_adapter(result, spec(files, "stack2.safetensors"))
    assert "transformer" in str(info.value) and "unloaded" in str(info.value)
    assert all(entry.module is not transformer for entry in cache._entries.values())
    assert result.released  # the next run loads a fresh transformer
    monkeypatch.undo()
    fresh = load(tiny_flux, None, dtype="float32", device="cpu", cache=cache)
    assert fresh.pipeline.transformer is not transformer
    run(fresh)


def test_the_quanto_refusal_holds_when_a_shared_module_carries_the_adapter(tiny_flux, files):
    cache = ComponentCache(budget_bytes=1 << 40)
    plain = load(tiny_flux, None, dtype="float32", device="cpu", cache=cache)
    good = spec(files, "good.safetensors")  # transformer + text_encoder layers
    lora.load_adapter(plain, good)
    quanto = load(
        tiny_flux,
        ComponentMap.make({"transformer": BackendSpec.make("quanto", "int8")}),
        dtype="float32",
        device="cpu",
        cache=cache,
    )
    assert quanto.pipeline.text_encoder is plain.pipeline.text_encoder  # shared: it carries the adapter
    with pytest.raises(ValidationError) as info:
        lora.load_adapter(quanto, good)
    assert info.value.codes == ["lora_backend_unsupported"] and "quanto" in str(info.value)
    with pytest.raises(ValidationError):
        run(quanto.with_lora(good))  # the Sampler's path refuses it too
    assert not any("lora" in n for n, _ in quanto.pipeline.transformer.named_parameters())


def test_a_stack_longer_than_the_adapter_limit_runs(flux, files, monkeypatch):
    monkeypatch.setattr(lora, "MAX_ADAPTERS", 2)
    specs = [spec(files, f"stack{i}.safetensors") for i in (1, 2, 3)]
    result = flux
    for s in specs:
        lora.load_adapter(result, s, keep={x.adapter_name for x in result.loras} | {s.adapter_name})
        result = result.with_lora(s)
    three = run(result)
    assert lora._loaded(flux.pipeline) >= {s.adapter_name for s in specs}
    two = run(flux.with_lora(specs[0]).with_lora(specs[1]))
    assert not torch.equal(three, two)
    assert torch.equal(run(result), three)  # back to three: the same image
    lora.strip_adapters(flux.pipeline)


@pytest.mark.parametrize("raw", ["abc", "", "0", "-3", "1.5"])
def test_max_loras_setting_never_breaks_the_import(raw, monkeypatch, caplog):
    env = {**os.environ, "PIPEQUANT_MAX_LORAS": raw}
    done = subprocess.run(
        [sys.executable, "-c", "import pipequant.resolver.run.lora as l; print(l.max_adapters())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip().splitlines()[-1] == "8"
    monkeypatch.setenv("PIPEQUANT_MAX_LORAS", raw)
    with caplog.at_level(logging.WARNING, logger="pipequant"):
        assert lora.max_adapters() == 8
    if raw:
        assert "PIPEQUANT_MAX_LORAS" in caplog.text
    monkeypatch.setenv("PIPEQUANT_MAX_LORAS", "3")
    assert lora.max_adapters() == 3


def test_a_failure_switching_the_stack_on_leaves_every_adapter_off(flux, files, monkeypatch):
    base = run(flux)
    with_one = flux.with_lora(spec(files, "stack1.safetensors"))
    lora.load_adapter(flux, with_one.loras[0])

    def fails(self, *args, **kwargs):
        raise RuntimeError("adapter weights out of sync")

    monkeypatch.setattr(type(flux.pipeline), "set_adapters", fails)
    with pytest.raises(ValidationError) as info:
        run(with_one)
    assert info.value.codes == ["lora_activate_failed"]
    monkeypatch.undo()
    with torch.inference_mode():
        out = generate(flux.pipeline, **SAMPLE)  # what a plain run computes without activate()
    assert torch.equal(out, base)
    lora.strip_adapters(flux.pipeline)
