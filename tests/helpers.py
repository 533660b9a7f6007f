"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import contextlib

import torch


@contextlib.asynccontextmanager
async def routes_client():
    """aiohttp's test client over an app holding exactly the editor's routes (no ComfyUI)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from pipequant.nodes import routes

    app = web.Application()
    routes.add_routes(app.router)
    async with TestClient(TestServer(app)) as client:
        yield client


def call(method: str, path: str, **kwargs) -> tuple[int, dict]:
    """(status, JSON body) of one request to the editor's routes."""

    async def run():
        async with routes_client() as client:
            response = await client.request(method, path, **kwargs)
            return response.status, await response.json()

    return asyncio.run(run())


def count_storage_bytes(module: torch.nn.Module) -> int:
    """Independent count of the bytes behind a module's tensors (quantized storage included)."""
    seen, total = set(), 0

    def visit(t):
        nonlocal total
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
            for name in t.__tensor_flatten__()[0]:
                visit(getattr(t, name))
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        for extra in ("SCB",):
            if isinstance(getattr(t, extra, None), torch.Tensor):
                visit(getattr(t, extra))
        state = getattr(t, "quant_state", None)
        while state is not None:
            for value in vars(state).values():
                if isinstance(value, torch.Tensor):
                    visit(value)
            state = getattr(state, "state2", None)

    for t in list(module.parameters()) + list(module.buffers()):
        visit(t)
    return total


def quantized_weight_types(module: torch.nn.Module) -> set[str]:
    """'package.Class' of every weight that is not a plain tensor (bnb, torchao, quanto, GGUF)."""
    out = set()
    for m in module.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and (
            type(w) not in (torch.Tensor, torch.nn.Parameter) or type(m).__module__.startswith("optimum.quanto")
        ):
            kind = type(w) if type(w) not in (torch.Tensor, torch.nn.Parameter) else type(m)
            out.add(f"{kind.__module__.split('.')[0]}.{kind.__name__}")
    return out


# 100 bytes that claim a 2^40-item array in their metadata (gguf's reader would allocate for each).
HUGE_ARRAY_GGUF = (
    b"GGUF"
    + (3).to_bytes(4, "little")
    + (0).to_bytes(8, "little")
    + (1).to_bytes(8, "little")
    + (4).to_bytes(8, "little")
    + b"vals"
    + (9).to_bytes(4, "little")
    + (0).to_bytes(4, "little")
    + (2**40).to_bytes(8, "little")
).ljust(100, b"\0")


def load_with_disk_cache(folder, spec, cache):
    """The Load path as a node runs it (inference mode), with `cache` as its disk cache; returns once
    the background entry writes are done."""
    from pipequant.resolver.keep import wait_for_writes
    from pipequant.resolver.keep.load import load

    with torch.inference_mode():
        result = load(folder, spec, device="cpu", cache=None, disk_cache=cache)
    wait_for_writes()
    return result


def spy_on_read_saved(monkeypatch, backend_class) -> list:
    """Records, per call of `backend_class.read_saved`, whether the backend's own reader read the
    entry (True) or left it to the library's loader (False)."""
    calls = []
    real = backend_class.read_saved

    def spy(self, *args):
        module = real(self, *args)
        calls.append(module is not None)
        return module

    monkeypatch.setattr(backend_class, "read_saved", spy)
    return calls


def assert_read_as_diffusers_reads_it(fast, library, fresh) -> None:
    """A cached FLUX transformer read by its backend's own reader (`fast`) against the same entry read
    by diffusers' loader (`library`) and the module quantized in the first load (`fresh`): the same
    config and quantizer, in eval mode, and the same output as both."""
    assert dict(fast.config) == dict(library.config)
    assert fast.hf_quantizer.pre_quantized and fast.is_quantized and not fast.training
    assert fast.hf_quantizer.quantization_config.to_dict() == library.hf_quantizer.quantization_config.to_dict()
    assert torch.equal(flux_transformer_output(fast), flux_transformer_output(fresh))
    assert torch.equal(flux_transformer_output(fast), flux_transformer_output(library))


def flux_transformer_output(module) -> torch.Tensor:
    """One forward of a (tiny) FLUX transformer on fixed random inputs, for comparing two loads."""
    torch.manual_seed(0)
    config = module.config
    with torch.inference_mode():
        return module(
            hidden_states=torch.randn(1, 16, config.in_channels, dtype=torch.bfloat16),
            encoder_hidden_states=torch.randn(1, 8, config.joint_attention_dim, dtype=torch.bfloat16),
            pooled_projections=torch.randn(1, config.pooled_projection_dim, dtype=torch.bfloat16),
            timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(8, 3),
            guidance=torch.tensor([3.5]) if config.guidance_embeds else None,
            return_dict=False,
        )[0]


@contextlib.contextmanager
def shape_facts(monkeypatch, store: str, seed: str):
    """The planner's shape facts from `store` (a folder, or "off") and the shipped seed ("on" or
    "off"), with none of them in memory before or after (as in a new process)."""
    from pipequant.resolver.files import shape_seed, shape_store

    monkeypatch.setenv(shape_store.ENV, store)
    monkeypatch.setenv(shape_seed.ENV, seed)
    forget_shape_facts()
    try:
        yield
    finally:
        forget_shape_facts()


def forget_shape_facts() -> None:
    """What a new process holds in memory of models' shapes: nothing (the planner's and the
    estimate's in-process caches cleared; the disk store and the shipped seed are left as set)."""
    from pipequant.resolver.decide import footprint
    from pipequant.resolver.decide.planner import candidates
    from pipequant.resolver.files import shape_seed

    for cached in (
        footprint._layout,
        footprint._fp32_names,
        footprint._quantized_weights,
        footprint._shared_model,
        footprint._folded_model,
    ):
        cached.cache_clear()
    candidates._choices.cache_clear()
    candidates.deprecated.cache_clear()
    shape_seed._matches.cache_clear()
