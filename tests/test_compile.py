"""torch.compile of the denoiser (regional/full), its fallbacks, the component cache's split between
compiled and eager modules, and Cancel within a step, all inside torch.inference_mode() as ComfyUI
runs nodes.

Inductor compiles on CPU with the system C++ compiler, about 20 s per block class here, cold: two
cases use inductor (FLUX bf16, SD3 quanto int8); the others use `aot_eager`, which traces the same
graphs through dynamo and AOTAutograd (where quantized tensor subclasses fail, if they do) without
generating C++.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from pipequant.nodes import host
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.nodes.sampler import PipeQuantSampler
from pipequant.resolver import BackendSpec, ComponentCache
from pipequant.resolver.keep import load
from pipequant.resolver.run.blocks import repeated_blocks
from pipequant.resolver.run.compile import compile_state
from pipequant.resolver.run.sample import generate

SMALL = {"prompt": "a fox", "steps": 2, "width": 32, "height": 32, "max_sequence_length": 16}


BLOCKS = {"flux": {"FluxTransformerBlock", "FluxSingleTransformerBlock"}, "sd3": {"JointTransformerBlock"}}


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def run(pipeline, **kwargs):
    return generate(pipeline, **{**SMALL, **kwargs})


def spec_for(quant):
    return BackendSpec.make(*quant, components=["transformer"]) if quant else None


@pytest.fixture
def pipelines(tiny_flux, tiny_sd3):
    return {"flux": tiny_flux, "sd3": tiny_sd3}


@pytest.mark.parametrize(
    "model, quant, backend, atol",
    [
        # FLUX bf16 is covered (aot_eager) by test_compiled_flux_is_cached_reused_and_cancellable
        ("flux", ("torchao", "int8_weight_only"), "aot_eager", 0.0),
        ("flux", ("quanto", "int8"), "aot_eager", 0.0),
        ("sd3", None, "inductor", 0.05),
        ("sd3", ("torchao", "int8_weight_only"), "aot_eager", 0.0),
        ("sd3", ("quanto", "int8"), "aot_eager", 0.0),
    ],
)
def test_regional_compile_matches_eager_and_does_not_recompile(pipelines, model, quant, backend, atol):
    with torch.inference_mode():
        eager = run(load(pipelines[model], spec_for(quant), device="cpu", cache=None).pipeline)
        result = load(
            pipelines[model], spec_for(quant), device="cpu", cache=None, compile="regional", compile_backend=backend
        )
        transformer = result.pipeline.transformer
        state = compile_state(transformer)
        assert state is result.compiled and state.modules
        assert {type(m).__name__ for m in state.modules} == BLOCKS[model]
        before = graphs()
        first = run(result.pipeline)
        assert graphs() > before, "the first run compiles"
        assert state.failed is None, state.failed
        assert (first - eager).abs().max().item() <= atol
        compiled_once = graphs()
        second = run(result.pipeline)
        assert graphs() == compiled_once, "the second run of the same workflow must not recompile"
        assert torch.equal(first, second)


def test_compiled_flux_is_cached_reused_and_cancellable(tiny_flux):
    """The cache keeps compiled and eager denoisers apart and never recompiles a module it already
    compiled; a Cancel raised inside a compiled block stops the run and is no compile failure."""

    class Cancelled(Exception):
        pass

    calls = []

    def cancel_at_second_block():
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled

    cache = ComponentCache()
    with torch.inference_mode():
        eager = load(tiny_flux, None, device="cpu", cache=cache)
        reference = run(eager.pipeline)
        compiled = load(tiny_flux, None, device="cpu", cache=cache, compile="regional", compile_backend="aot_eager")
        assert compiled.pipeline.transformer is not eager.pipeline.transformer
        assert compiled.pipeline.text_encoder is eager.pipeline.text_encoder, "components not compiled are shared"
        assert {type(m).__name__ for m in compiled.compiled.modules} == BLOCKS["flux"]
        assert torch.equal(run(compiled.pipeline), reference)
        after_first = graphs()

        again_eager = load(tiny_flux, None, device="cpu", cache=cache)
        assert again_eager.pipeline.transformer is eager.pipeline.transformer
        assert compile_state(again_eager.pipeline.transformer) is None
        assert all(m._compiled_call_impl is None for m in again_eager.pipeline.transformer.modules())
        again = load(tiny_flux, None, device="cpu", cache=cache, compile="regional", compile_backend="aot_eager")
        assert again.pipeline.transformer is compiled.pipeline.transformer and again.compiled is compiled.compiled
        assert torch.equal(run(again.pipeline), reference)
        assert graphs() == after_first, "a module compiled before is not compiled again"

        with pytest.raises(Cancelled):
            run(again.pipeline, check_interrupt=cancel_at_second_block)
    assert len(calls) == 2, "no block ran after the check raised"
    assert again.compiled.failed is None
    assert all(m._compiled_call_impl is not None for m in again.compiled.modules)


def test_int8_dynamic_keeps_its_batch_one_layers_eager(tiny_flux):
    """torchao int8 dynamic's compiled matmul rejects inputs of one row (the timestep/guidance
    embedders, the norms' modulation): those layers run eager inside the compiled blocks."""
    spec = spec_for(("torchao", "int8_dynamic"))
    with torch.inference_mode():
        eager = run(load(tiny_flux, spec, device="cpu", cache=None).pipeline)
        result = load(tiny_flux, spec, device="cpu", cache=None, compile="regional", compile_backend="aot_eager")
        transformer = result.pipeline.transformer
        kept = {
            n
            for n, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and getattr(m.forward, "_torchdynamo_disable", False)
        }
        assert "norm_out.linear" in kept and "single_transformer_blocks.0.norm.linear" in kept
        assert "time_text_embed.timestep_embedder.linear_1" in kept
        assert not any(n.endswith(("to_q", "to_k", "proj_out", "ff.net.2")) for n in kept), kept
        assert any("left eager under compile" in n and "greater than 16" in n for n in result.notes)
        out = run(result.pipeline)
        assert result.compiled.failed is None
        assert torch.equal(out, eager)
        assert "left eager under compile" in result.table


def test_a_compile_failure_falls_back_to_eager_with_a_warning(tiny_flux, caplog):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("forced compile failure")

    with torch.inference_mode():
        eager = run(load(tiny_flux, None, device="cpu", cache=None).pipeline)
        result = load(tiny_flux, None, device="cpu", cache=None, compile="regional", compile_backend=broken_backend)
        out = run(result.pipeline)
    assert torch.equal(out, eager)
    assert "forced compile failure" in result.compiled.failed
    assert all(m._compiled_call_impl is None for m in result.compiled.modules)
    assert "failed at run time, running eager" in result.table
    assert "failed at run time" in caplog.text


def test_a_new_resolution_recompiles_once_then_not_again(tiny_sd3):
    with torch.inference_mode():
        result = load(tiny_sd3, None, device="cpu", cache=None, compile="regional", compile_backend="aot_eager")
        run(result.pipeline, width=32, height=32)
        first = graphs()
        run(result.pipeline, width=48, height=48)
        second = graphs()
        run(result.pipeline, width=64, height=64)
        run(result.pipeline, width=32, height=48)
    assert second > first
    assert graphs() == second, "after one recompile the sizes are dynamic"
    assert result.compiled.failed is None


def test_full_compile_wraps_the_whole_denoiser(tiny_sd3):
    with torch.inference_mode():
        eager = run(load(tiny_sd3, None, device="cpu", cache=None).pipeline)
        result = load(tiny_sd3, None, device="cpu", cache=None, compile="full", compile_backend="aot_eager")
        assert result.compiled.modules == [result.pipeline.transformer]
        out = run(result.pipeline)
    assert result.compiled.failed is None
    assert torch.equal(out, eager)


def test_blocks_without_a_declaration_are_the_outermost_module_list_entries():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixed = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU()])
            self.blocks = torch.nn.ModuleList([Block(), Block(), Block()])

    net = Net()
    assert repeated_blocks(net) == list(net.blocks)
    net._repeated_blocks = ["Linear"]  # a declaration wins
    assert len(repeated_blocks(net)) == 7


# -- Cancel within a step, eager -------------------------------------------------------------
def test_cancel_stops_within_one_block_of_an_eager_step(tiny_flux):
    """The node's own check: a Cancel pressed while a block runs stops the run before the next block."""
    with torch.inference_mode():
        result = load(tiny_flux, None, device="cpu", cache=None)
        blocks = repeated_blocks(result.pipeline.transformer)
        ran = []

        def press_cancel_during_first_block(module, args, output):
            ran.append(module)
            if len(ran) == 1:
                host.request_interrupt()

        handles = [b.register_forward_hook(press_cancel_during_first_block) for b in blocks]
        try:
            with pytest.raises(host.Interrupted):
                PipeQuantSampler().sample(result, "a fox", "", 4, 3.5, 32, 32, 0, 1, 16)
        finally:
            for h in handles:
                h.remove()
            host._interrupt.clear()
    assert len(ran) == 1, "the block after the Cancel did not run"


# -- the node --------------------------------------------------------------------------------
def test_compile_is_the_load_nodes_last_optional_input():
    optional = PipeQuantLoadPipeline.INPUT_TYPES()["optional"]
    assert list(optional)[-1] == "compile"
    choices, options = optional["compile"]
    assert choices == ["none", "regional", "full"] and options["default"] == "none"
    assert "recompile once" in options["tooltip"]


def test_an_unknown_compile_mode_is_refused_before_loading(tiny_flux):
    from pipequant.resolver import ValidationError

    with pytest.raises(ValidationError) as info:
        load(tiny_flux, None, device="cpu", cache=None, compile="fastest")
    assert info.value.codes == ["compile_unknown"]
