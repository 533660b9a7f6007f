"""LoRA per expert (issue 23 item 3): on Wan 2.2 A14B (a high-noise `transformer` and a low-noise
`transformer_2`), Apply LoRA puts a file on the expert(s) it targets (its keys, else its name, else
both), or on the one chosen with the node's `expert` input; a file that targets no expert of the
pipeline is refused naming the node, the input and the valid values, and leaves every module as it was.
Tiny Wan 2.1 / 2.2 pipelines (testing/families.py), LoRA files written here."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipequant.nodes import NODE_CLASS_MAPPINGS
from pipequant.nodes.messages import NodeInputError
from pipequant.resolver.keep.load import load
from pipequant.resolver.problems import ValidationError
from pipequant.resolver.run import lora
from pipequant.testing import write_peft_lora, write_wan_comfy_lora
from pipequant.testing.families import ensure_family

LoRA = NODE_CLASS_MAPPINGS["PipeQuantLoRA"]
EXPERTS = ("transformer", "transformer_2")


@pytest.fixture(scope="module")
def wan_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-families")
    return ensure_family("Wan 2.2 A14B", root), ensure_family("Wan 2.1", root)


@pytest.fixture(scope="module")
def loras(tmp_path_factory, wan_root):
    wan22, _ = wan_root
    root = tmp_path_factory.mktemp("wan-loras")
    # One file per expert, as the hub ships them (the name says which), in both layouts.
    write_peft_lora(wan22, root / "lightning" / "high_noise_model.safetensors", seed=1)
    write_wan_comfy_lora(wan22, root / "lightning" / "low_noise_model.safetensors", seed=2)
    write_wan_comfy_lora(wan22, root / "style_wan22_HIGH.safetensors", seed=3)
    # One file for both experts: keyed per expert, or a Wan 2.1-style file whose name says nothing.
    a = write_peft_lora(wan22, root / "tmp-a.safetensors", seed=4)
    b = write_peft_lora(wan22, root / "tmp-b.safetensors", component="transformer_2", seed=5)
    save_file({**load_file(str(a)), **load_file(str(b))}, str(root / "both_keyed.safetensors"))
    a.unlink()
    b.unlink()
    write_wan_comfy_lora(wan22, root / "wan21_style.safetensors", seed=6)
    # A file for neither: keyed for the low-noise expert, which Wan 2.1 lacks.
    write_peft_lora(wan22, root / "only_transformer_2.safetensors", component="transformer_2", seed=7)
    return root


def _load(folder):
    return load(folder, None, dtype="float32", device="cpu", cache=None)


def _outputs(pipeline) -> dict[str, torch.Tensor]:
    """Each expert's output on one fixed input (what the Sampler's steps compute)."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 1, 4, 4, generator=g)
    text = torch.randn(1, 8, 128, generator=g)
    out = {}
    with torch.no_grad():
        for name in EXPERTS:
            module = getattr(pipeline, name, None)
            if module is not None:
                out[name] = module(latents, torch.tensor([500]), text, return_dict=False)[0]
    return out


def _apply(result, root, name, expert="auto"):
    spec = lora.make_spec(name, [root], 1.0, 1.0, expert)
    lora.load_adapter(result, spec)
    result = result.with_lora(dataclasses.replace(spec, placed=lora.placement(result.pipeline, spec)))
    lora.activate(result)
    return result


def _changed(result, root, name, expert="auto") -> set[str]:
    base = _outputs(result.pipeline)
    applied = _apply(result, root, name, expert)
    after = _outputs(applied.pipeline)
    lora.activate(result)  # back to the plain stack
    plain = _outputs(result.pipeline)
    for e in base:
        assert torch.equal(plain[e], base[e]), f"{e} did not come back to its plain output"
    return {e for e in base if not torch.allclose(after[e], base[e])}


@pytest.mark.parametrize(
    "name,expert,changed",
    [
        ("lightning/high_noise_model.safetensors", "auto", {"transformer"}),
        ("lightning/low_noise_model.safetensors", "auto", {"transformer_2"}),
        ("style_wan22_HIGH.safetensors", "auto", {"transformer"}),
        ("both_keyed.safetensors", "auto", {"transformer", "transformer_2"}),
        ("wan21_style.safetensors", "auto", {"transformer", "transformer_2"}),
        # The node's choice wins over the name, for either layout.
        ("lightning/high_noise_model.safetensors", "transformer_2 (low noise)", {"transformer_2"}),
        ("wan21_style.safetensors", "transformer (high noise)", {"transformer"}),
        ("lightning/low_noise_model.safetensors", "all experts", {"transformer", "transformer_2"}),
        ("both_keyed.safetensors", "transformer_2 (low noise)", {"transformer_2"}),
    ],
)
def test_a_lora_changes_only_the_experts_it_targets(wan_root, loras, name, expert, changed):
    result = _load(wan_root[0])
    assert _changed(result, loras, name, expert) == changed
    carriers = {c for c, names in result.pipeline.get_list_adapters().items() if names}
    assert carriers == changed


def test_each_expert_gets_its_own_file_and_the_report_says_which(wan_root, loras, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_LORAS", str(loras))
    monkeypatch.setattr("pipequant.nodes.host._comfy_paths", lambda kind: [])
    result = _load(wan_root[0])
    base = _outputs(result.pipeline)
    (high,) = LoRA().apply(result, "lightning/high_noise_model.safetensors", 1.0)
    (both,) = LoRA().apply(high, "lightning/low_noise_model.safetensors", 1.0)
    lora.activate(high)
    only_high = _outputs(high.pipeline)
    lora.activate(both)
    stacked = _outputs(both.pipeline)
    assert not torch.allclose(only_high["transformer"], base["transformer"])
    assert torch.equal(only_high["transformer_2"], base["transformer_2"])
    assert torch.equal(stacked["transformer"], only_high["transformer"])  # the low-noise file left it alone
    assert not torch.allclose(stacked["transformer_2"], base["transformer_2"])
    notes = "\n".join(both.notes)
    assert 'LoRA "lightning/high_noise_model.safetensors" → transformer (high noise): the file name says' in notes
    assert 'LoRA "lightning/low_noise_model.safetensors" → transformer_2 (low noise)' in notes
    assert "LoRA" in both.table and "transformer_2 (low noise)" in both.table


def _plain_state(pipeline) -> dict:
    return {
        name: {k: v.clone() for k, v in getattr(pipeline, name).state_dict().items()}
        for name in ("transformer", "transformer_2", "text_encoder")
        if getattr(pipeline, name, None) is not None
    }


def _assert_untouched(pipeline, before):
    for name, state in before.items():
        module = getattr(pipeline, name)
        assert not any("lora" in n for n, _ in module.named_parameters()), f"{name} kept LoRA layers"
        # peft may leave a plain layer wrapped (`.base_layer`) once its adapter is deleted: same tensors
        after = {k.replace(".base_layer", ""): v for k, v in module.state_dict().items()}
        assert after.keys() == state.keys(), name
        assert all(torch.equal(after[k], v) for k, v in state.items()), name


@pytest.mark.parametrize(
    "pipeline,name,expert,code,needle",
    [
        # keyed for transformer_2 only: Wan 2.1 has no such expert
        (1, "only_transformer_2.safetensors", "auto", "lora_no_expert", "transformer_2 (low noise), which WanPipeline"),
        # a choice the pipeline lacks
        (1, "wan21_style.safetensors", "transformer_2 (low noise)", "lora_expert_invalid", 'no expert "transformer_2'),
        # a part the file lacks
        (0, "only_transformer_2.safetensors", "transformer (high noise)", None, None),
        (0, "wan21_style.safetensors", "high", "lora_expert_invalid", "not an expert choice"),
    ],
)
def test_a_file_for_no_expert_is_refused_naming_node_input_and_values(
    wan_root, loras, pipeline, name, expert, code, needle
):
    result = _load(wan_root[pipeline])
    before = _plain_state(result.pipeline)
    if code is None:  # a one-part file may be put on another expert on purpose
        assert _changed(result, loras, name, expert) == {"transformer"}
        return
    with pytest.raises(ValidationError) as raised:
        lora.load_adapter(result, lora.make_spec(name, [loras], 1.0, 1.0, expert))
    (problem,) = raised.value.problems
    assert problem.code == code and problem.input == "expert", problem
    assert needle in problem.message, problem.message
    assert "all experts" in problem.suggestion, problem.suggestion  # the valid values
    _assert_untouched(result.pipeline, before)


def test_the_node_names_itself_the_input_and_the_valid_values(wan_root, loras, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_LORAS", str(loras))
    monkeypatch.setattr("pipequant.nodes.host._comfy_paths", lambda kind: [])
    result = _load(wan_root[1])
    with pytest.raises(NodeInputError) as raised:
        LoRA().apply(result, "wan21_style.safetensors", 1.0, 1.0, "transformer_2 (low noise)")
    text = str(raised.value)
    assert text.startswith("Apply LoRA › expert:"), text
    assert "use one of: auto, all experts, transformer (high noise)" in text, text


def test_a_failure_on_the_second_expert_leaves_both_as_they_were(wan_root, loras, monkeypatch):
    result = _load(wan_root[0])
    pipeline = result.pipeline
    before = _plain_state(pipeline)
    real = type(pipeline).load_lora_weights

    def fail_on_transformer_2(self, *args, **kwargs):
        if kwargs.get("load_into_transformer_2"):
            raise RuntimeError("disk went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(pipeline), "load_lora_weights", fail_on_transformer_2)
    with pytest.raises(ValidationError) as raised:
        lora.load_adapter(result, lora.make_spec("wan21_style.safetensors", [loras]))
    assert raised.value.problems[0].code == "lora_load_failed"
    assert "the pipeline is unchanged" in raised.value.problems[0].message
    assert not any(pipeline.get_list_adapters().values())
    _assert_untouched(pipeline, before)
    monkeypatch.undo()
    assert _changed(result, loras, "wan21_style.safetensors") == {"transformer", "transformer_2"}  # still usable


def test_single_denoiser_pipelines_keep_diffusers_own_placement(wan_root, loras):
    result = _load(wan_root[1])
    assert lora.placement(result.pipeline, lora.make_spec("lightning/low_noise_model.safetensors", [loras])) == ""
    assert _changed(result, loras, "lightning/low_noise_model.safetensors") == {"transformer"}
    # the adapter names of "auto" specs are the ones saved workflows always had
    spec = lora.make_spec("wan21_style.safetensors", [loras])
    assert spec.adapter_name == lora.make_spec("wan21_style.safetensors", [loras], 1.0, 1.0, "auto").adapter_name
    assert spec.adapter_name != lora.make_spec("wan21_style.safetensors", [loras], 1.0, 1.0, "all experts").adapter_name
