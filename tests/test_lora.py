"""LoRAs on loaded pipelines: formats, stacking, strengths, per-backend capability, cache correctness,
and the specific errors. Tiny FLUX and SD pipelines, LoRAs written by the tests (peft and kohya)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from pipequant.nodes import NODE_CLASS_MAPPINGS
from pipequant.resolver.keep.cache import ComponentCache
from pipequant.resolver.keep.load import load
from pipequant.resolver.links.spec import BackendSpec, ComponentMap
from pipequant.resolver.problems import ValidationError
from pipequant.resolver.run import lora
from pipequant.resolver.run.sample import generate
from pipequant.testing import write_kohya_lora, write_peft_lora

LoRA = NODE_CLASS_MAPPINGS["PipeQuantLoRA"]
Sampler = NODE_CLASS_MAPPINGS["PipeQuantSampler"]
Load = NODE_CLASS_MAPPINGS["PipeQuantLoadPipeline"]
SAMPLE = dict(prompt="a cat", steps=2, width=32, height=32, max_sequence_length=32, seed=3)


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory, tiny_flux, tiny_sd):
    root = tmp_path_factory.mktemp("loras")
    write_peft_lora(tiny_flux, root / "flux-peft.safetensors", text_encoder="text_encoder")
    write_peft_lora(tiny_flux, root / "flux-peft-b.safetensors", seed=7, leaves=("ff.net.2", "proj_out"))
    write_kohya_lora(tiny_flux, root / "sub" / "flux-kohya.safetensors")
    write_peft_lora(tiny_sd, root / "sd-peft.safetensors", component="unet", scale=0.2)
    write_kohya_lora(tiny_sd, root / "sd-kohya.safetensors", scale=0.2)
    return root


def run(result, **kw):
    """What the Sampler does: activate the object's stack, then sample (under inference_mode, as ComfyUI)."""
    with torch.inference_mode():
        lora.activate(result)
        return generate(result.pipeline, **{**SAMPLE, **kw})


def spec(root, name, strength=1.0, te=1.0):
    return lora.make_spec(name, [root], strength, te)


def with_loras(result, *specs):
    for s in specs:
        lora.load_adapter(result, s)
        result = result.with_lora(s)
    return result


@pytest.fixture
def flux(tiny_flux):
    return load(tiny_flux, None, dtype="float32", device="cpu", cache=None)


@pytest.mark.parametrize(
    "kind,files",
    [
        ("flux", ("flux-peft.safetensors", "sub/flux-kohya.safetensors")),
        ("sd", ("sd-peft.safetensors", "sd-kohya.safetensors")),
    ],
)
def test_both_layouts_change_the_output_and_strength_zero_is_the_base(kind, files, lora_root, tiny_flux, tiny_sd):
    base_result = load(tiny_flux if kind == "flux" else tiny_sd, None, dtype="float32", device="cpu", cache=None)
    base = run(base_result)
    for name in files:
        s = spec(lora_root, name)
        found = lora.check(base_result, s)
        assert found.get("transformer" if kind == "flux" else "unet", 0) > 0
        on = run(with_loras(base_result, s))
        assert (on - base).abs().max() > 1e-3, f"{name} changed nothing"
        off = dataclasses.replace(s, strength=0.0, strength_text_encoder=0.0)
        assert torch.equal(run(base_result.with_lora(off)), base)
        assert torch.equal(run(base_result), base)  # the object without the LoRA is the base again


def test_stacking_and_strength_changes_reuse_the_loaded_weights(flux, lora_root, monkeypatch):
    a, b = spec(lora_root, "flux-peft.safetensors"), spec(lora_root, "flux-peft-b.safetensors")
    base = run(flux)
    only_a, only_b = run(with_loras(flux, a)), run(with_loras(flux, b))
    both = run(with_loras(flux, a, b))
    for other in (base, only_a, only_b):
        assert (both - other).abs().max() > 1e-4
    # Changing a strength or the order re-weights what is loaded: no file is read again.
    calls = []
    monkeypatch.setattr(
        type(flux.pipeline),
        "load_lora_weights",
        lambda self, *args, **kw: calls.append(args) or pytest.fail("reloaded"),
    )
    half = run(flux.with_lora(dataclasses.replace(a, strength=0.5)))
    assert (half - only_a).abs().max() > 1e-4 and (half - base).abs().max() > 1e-4
    assert torch.equal(run(flux.with_lora(a).with_lora(b)), both)
    assert torch.equal(run(flux.with_lora(a)), only_a)
    assert torch.equal(run(flux), base) and not calls


def test_text_encoder_strength_only_moves_the_text_encoder(flux, lora_root):
    a = spec(lora_root, "flux-peft.safetensors")
    assert {"transformer", "text_encoder"} <= set(lora.check(flux, a))
    full = run(with_loras(flux, a))
    no_te = run(flux.with_lora(dataclasses.replace(a, strength_text_encoder=0.0)))
    no_tr = run(flux.with_lora(dataclasses.replace(a, strength=0.0)))
    base = run(flux)
    assert (full - no_te).abs().max() > 1e-4 and (no_te - base).abs().max() > 1e-4
    assert (no_tr - base).abs().max() > 1e-4


def test_cache_never_hands_out_an_adapter_as_plain(tiny_flux, lora_root):
    cache = ComponentCache()
    fresh = run(load(tiny_flux, None, dtype="float32", device="cpu", cache=None))
    first = load(tiny_flux, None, dtype="float32", device="cpu", cache=cache)
    a, b = spec(lora_root, "flux-peft.safetensors"), spec(lora_root, "flux-peft-b.safetensors")
    with_a = with_loras(first, a)
    out_a = run(with_a)
    # The base plan loaded again (its components come from the cache, still carrying adapter a).
    again = load(tiny_flux, None, dtype="float32", device="cpu", cache=cache)
    assert again.pipeline.transformer is first.pipeline.transformer
    assert all(r["reused"] for r in again.rows if r.get("action") != "not a model" and "reused" in r)
    with torch.inference_mode():  # straight from the loader, before any Sampler ran
        plain = generate(again.pipeline, **SAMPLE)
    assert torch.equal(plain, fresh)
    # Two workflows with different LoRAs on the same cached components: each gets its own result.
    with_b = with_loras(again, b)
    out_b = run(with_b)
    fresh_b = run(with_loras(load(tiny_flux, None, dtype="float32", device="cpu", cache=None), b))
    assert torch.equal(out_b, fresh_b)
    assert torch.equal(run(with_a), out_a)
    assert torch.equal(run(again), fresh) and torch.equal(run(first), fresh)


def test_adapters_beyond_the_limit_are_evicted_and_reload(flux, lora_root, monkeypatch):
    monkeypatch.setattr(lora, "MAX_ADAPTERS", 1)
    a, b = spec(lora_root, "flux-peft.safetensors"), spec(lora_root, "flux-peft-b.safetensors")
    only_a = run(with_loras(flux, a))
    run(with_loras(flux, b))
    assert lora._loaded(flux.pipeline) == {b.adapter_name}
    assert torch.equal(run(flux.with_lora(a)), only_a)  # loaded again from its file


# -- errors -----------------------------------------------------------------------------------------
def _code(fn) -> str:
    with pytest.raises(ValidationError) as info:
        fn()
    return info.value.codes[0], str(info.value)


def test_paths_outside_the_root_are_refused(lora_root, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    link = lora_root / "link.safetensors"
    if not link.exists():
        os.symlink(outside, link)
    for name in ("../outside.safetensors", str(outside), "link.safetensors", "sub\\flux-kohya.safetensors"):
        code, text = _code(lambda: lora.resolve_lora(name, [lora_root]))
        assert code == "lora_outside_roots", (name, text)
    assert _code(lambda: lora.resolve_lora("model.ckpt", [lora_root]))[0] == "lora_not_safetensors"
    code, text = _code(lambda: lora.resolve_lora("flux-pef.safetensors", [lora_root]))
    assert code == "lora_not_found" and "flux-peft.safetensors" in text
    assert "link.safetensors" not in lora.list_loras([lora_root])
    assert "sub/flux-kohya.safetensors" in lora.list_loras([lora_root])


def test_malformed_and_foreign_loras_are_refused_before_anything_changes(flux, lora_root, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    save_file({"model.layers.0.weight": torch.zeros(2, 2)}, str(tmp_path / "weights.safetensors"))
    cases = {"junk.safetensors": "lora_malformed", "weights.safetensors": "lora_malformed"}
    for name, expected in cases.items():
        code, text = _code(lambda: lora.load_adapter(flux, spec(tmp_path, name)))
        assert code == expected and name in text, text
    code, text = _code(lambda: lora.load_adapter(flux, spec(lora_root, "sd-peft.safetensors")))
    assert code == "lora_mismatch" and "sd-peft.safetensors" in text and '"unet.' in text and "unet" in text
    assert lora._loaded(flux.pipeline) == set()  # nothing was injected
    assert not any("lora" in n for n, _ in flux.pipeline.transformer.named_parameters())


def test_a_lora_for_another_size_names_the_first_unmatched_keys(flux, tiny_sd, lora_root, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(lora_root / "flux-peft.safetensors"))
    tensors["transformer.transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(4, 128)
    tensors["transformer.transformer_blocks.7.attn.to_q.lora_B.weight"] = torch.zeros(128, 4)
    save_file(tensors, str(tmp_path / "bigger.safetensors"))
    code, text = _code(lambda: lora.check(flux, spec(tmp_path, "bigger.safetensors")))
    assert code == "lora_mismatch" and "transformer_blocks.7.attn.to_q" in text and "1 of" in text


# -- backends ---------------------------------------------------------------------------------------
def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _denoiser_output(result) -> torch.Tensor:
    """Latents after the steps: the LoRA's effect without the random tiny VAE on top."""
    with torch.inference_mode():
        lora.activate(result)
        from pipequant.resolver.run.context import diffusers_context

        with diffusers_context():
            result.pipeline.set_progress_bar_config(disable=True)
            return result.pipeline(
                prompt="a cat",
                num_inference_steps=2,
                width=32,
                height=32,
                max_sequence_length=32,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            ).images


# (backend, quant type) → bound on ‖quantized+LoRA − unquantized+LoRA‖ / ‖unquantized+LoRA‖ (tiny FLUX, fp32)
LORA_BACKENDS = [
    ("bitsandbytes_4bit", "nf4", 0.15),
    ("bitsandbytes_8bit", "int8", 0.03),
    ("torchao", "int8_weight_only", 0.02),
    ("torchao", "float8_weight_only", 0.06),
    ("gguf", None, 0.01),
]


def test_quantized_components_take_a_lora_with_bounded_error(tiny_flux, flux_gguf, lora_root, bnb_cpu, capsys):
    a = spec(lora_root, "flux-peft.safetensors")
    reference = load(tiny_flux, None, dtype="float32", device="cpu", cache=None)
    ref_base, ref = _denoiser_output(reference), _denoiser_output(with_loras(reference, a))
    rows = []
    for backend, quant_type, bound in LORA_BACKENDS:
        if backend == "gguf":
            plan = ComponentMap.make({"transformer": BackendSpec.make("gguf", "from_file", gguf_file=flux_gguf.name)})
        else:
            plan = BackendSpec.make(backend, quant_type, components=["transformer"])
        result = load(tiny_flux, plan, dtype="float32", device="cpu", cache=None, gguf_roots=[flux_gguf.parent])
        base = _denoiser_output(result)
        out = _denoiser_output(with_loras(result, a))
        err, quant_err = _relative(out, ref), _relative(base, ref_base)
        rows.append(f"{backend} {quant_type or 'Q8_0'}: LoRA rel err {err:.4f} (quantization alone {quant_err:.4f})")
        assert err < bound, rows[-1]
        assert _relative(out, base) > 0.1  # the LoRA did something on the quantized model
    with capsys.disabled():
        print("\n" + "\n".join(rows))


@pytest.mark.parametrize("quant_type", ["int8", "float8"])
def test_quanto_on_flux_is_refused_with_the_backend_named_and_the_fix(tiny_flux, lora_root, quant_type):
    result = load(
        tiny_flux,
        BackendSpec.make("quanto", quant_type, components=["transformer"]),
        dtype="float32",
        device="cpu",
        cache=None,
    )
    code, text = _code(lambda: lora.load_adapter(result, spec(lora_root, "sub/flux-kohya.safetensors")))
    assert code == "lora_backend_unsupported"
    assert "quanto" in text and "Per-Component Map" in text and '"transformer"' in text
    assert lora._loaded(result.pipeline) == set()
    # The fix it names works: the transformer unquantized, the text encoder still quanto.
    fixed = ComponentMap.make({"transformer": None, "text_encoder_2": BackendSpec.make("quanto", quant_type)})
    result = load(tiny_flux, fixed, dtype="float32", device="cpu", cache=None)
    run(with_loras(result, spec(lora_root, "sub/flux-kohya.safetensors")))


def test_catalogue_records_lora_support_per_backend_and_quant_type():
    from pipequant.resolver.known import catalogue

    data = {b["name"]: b for b in catalogue.describe()["backends"]}
    assert data["quanto"]["lora_refused_loaders"] == ["FluxLoraLoaderMixin"]
    types = {q["name"]: q["lora"] for q in data["torchao"]["quant_types"]}
    assert types["int8_weight_only"] and not types["int4_weight_only"]
    assert all(q["lora"] for q in data["bitsandbytes_4bit"]["quant_types"])


# -- the node ---------------------------------------------------------------------------------------
def test_nodes_chain_and_the_sampler_applies_exactly_the_stack(monkeypatch, models_root, tiny_flux, lora_root):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.setenv("PIPEQUANT_LORAS", str(lora_root))
    spec_ = LoRA.INPUT_TYPES()
    assert "flux-peft.safetensors" in spec_["required"]["lora_name"][0]
    assert spec_["required"]["strength"][1]["default"] == 1.0 and spec_["required"]["strength"][1]["min"] == -4.0
    assert LoRA.VALIDATE_INPUTS("flux-peft.safetensors") is True
    assert "Apply LoRA › lora_name" in LoRA.VALIDATE_INPUTS("../x.safetensors")
    sample = dict(
        prompt="a cat",
        negative_prompt="",
        steps=2,
        guidance_scale=3.5,
        width=32,
        height=32,
        seed=3,
        batch_size=1,
        max_sequence_length=32,
    )
    with torch.inference_mode():
        (base_pipe, _) = Load().load("tiny-flux", "float32", "cpu", "none")
        (one,) = LoRA().apply(base_pipe, "flux-peft.safetensors", 1.0)
        (two,) = LoRA().apply(one, "flux-peft-b.safetensors", 0.8, 0.0)
        assert base_pipe.loras == () and len(one.loras) == 1 and len(two.loras) == 2  # immutable stacks
        images = {
            name: Sampler().sample(p, **sample)[0] for name, p in (("two", two), ("base", base_pipe), ("one", one))
        }
        assert (images["two"] - images["one"]).abs().max() > 1e-4
        assert (images["one"] - images["base"]).abs().max() > 1e-4
        assert torch.equal(Sampler().sample(base_pipe, **sample)[0], images["base"])
        with pytest.raises(ValidationError) as info:
            LoRA().apply(base_pipe, "sd-peft.safetensors", 1.0)
    assert str(info.value).startswith("Apply LoRA › lora_name:") and info.value.codes == ["lora_mismatch"]


def test_save_refuses_a_lora_stack_and_saves_plain_weights(tiny_flux, lora_root, tmp_path):
    from pipequant.resolver.keep.save import save

    result = load(tiny_flux, None, dtype="float32", device="cpu", cache=None)
    stacked = with_loras(result, spec(lora_root, "flux-peft.safetensors"))
    assert _code(lambda: save(stacked, "with-lora", tmp_path))[0] == "lora_applied"
    dest = save(result, "plain", tmp_path)  # the shared modules carry the adapter: it is stripped first
    from safetensors import safe_open

    files = list((dest / "transformer").glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        assert not any("lora" in k or "base_layer" in k for k in f.keys())
