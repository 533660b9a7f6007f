"""Failures mid-load, the component cache under pressure, and interrupts during sampling.

A failed load must name the component and the file, leave nothing behind (no module or tensor of
the failed load alive, RSS back where it was, on GPU `memory_allocated` back to its baseline), put
nothing into the component cache, and the next valid load must work. Failures are injected where
they happen in practice: a shard truncated after validation (a download still being written), a
GGUF file whose tensor has the wrong shape, and an exception from inside a quantizer.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pipequant import testing as tiny
from pipequant.nodes import host
from pipequant.nodes.sampler import PipeQuantSampler
from pipequant.resolver import BackendSpec, ComponentCache, ComponentMap, LoadError, ValidationError, plan_load
from pipequant.resolver.keep import load
from pipequant.resolver.keep.load import load_plan
from pipequant.resolver.keep.memory import tensor_bytes

G = BackendSpec.make
MB = 1024 * 1024

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# -- measuring what survives ------------------------------------------------------------------------
def rss() -> int:
    """Resident set size in bytes, after a full collection and returning freed heap to the OS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_tensor_bytes() -> int:
    """Bytes of every distinct CPU storage behind a live tensor object."""
    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except Exception:  # tensor subclasses without plain storage, freed storages
            continue
        if ptr not in seen:
            seen.add(ptr)
            total += nbytes
    return total


@pytest.fixture
def created_models(monkeypatch):
    """Weak references to every diffusers/transformers model constructed while the test runs."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    refs: list[weakref.ref] = []
    original = torch.nn.Module.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if isinstance(self, (ModelMixin, PreTrainedModel)):
            refs.append(weakref.ref(self))

    monkeypatch.setattr(torch.nn.Module, "__init__", init)
    return refs


def alive(refs) -> list[str]:
    gc.collect()
    return [type(r()).__name__ for r in refs if r() is not None]


def assert_nothing_survives(
    error: LoadError, refs, cache: ComponentCache, keys_before, rss_before, tensors_before, rss_margin: int = 8 * MB
):
    """While the caller still holds the error (as a server that logs it would)."""
    assert refs, "the failed load constructed no model: the injection fired too early"
    assert alive(refs) == [], "modules of the failed load are still alive"
    assert live_tensor_bytes() <= tensors_before + 64 * 1024
    assert rss() - rss_before < rss_margin
    # Entries it reused were refreshed (moved to the recent end); none was added or dropped.
    assert sorted(map(repr, cache.keys())) == sorted(map(repr, keys_before)), "the failed load changed the cache"


# -- pipelines to break -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharded_flux(tmp_path_factory) -> Path:
    """tiny FLUX saved in ~200 KB shards, as hub checkpoints are."""
    return tiny.build_flux(tmp_path_factory.mktemp("sharded") / "sharded-flux", max_shard_size="200KB")


@pytest.fixture(scope="module")
def flux_20m(models_root) -> Path:
    """FLUX with a 20.6 M-parameter transformer (41 MB bf16): big enough for RSS to show a leak."""
    return tiny.ensure_pipeline("flux", models_root, size="20m")


def _write_gguf_with_wrong_shape(pipeline: Path, out: Path, tensor: str) -> Path:
    """A GGUF of the pipeline's transformer with the same parameter count (so validation's count
    check passes) but one weight stored transposed: only loading can find it."""
    import gguf
    from safetensors import safe_open

    writer = gguf.GGUFWriter(path=None, arch="flux")
    with safe_open(str(pipeline / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        for name in f.keys():
            array = f.get_tensor(name).to(torch.float16).numpy()
            if name == tensor:
                array = np.ascontiguousarray(array.T)
            writer.add_tensor(name, array)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _warm(cache: ComponentCache, folder: Path, **kw):
    """One successful load first: imports, allocator pools and the cache are warm, so what the
    failed load leaves behind is all that changes."""
    with torch.inference_mode():
        result = load(folder, None, device="cpu", cache=cache, **kw)
    del result
    gc.collect()


# -- 1. a shard truncated in the second component -------------------------------------------------------
def test_truncated_shard_is_refused_before_loading(sharded_flux, tmp_path, created_models):
    folder = shutil.copytree(sharded_flux, tmp_path / "sharded-flux")
    shard = sorted((folder / "text_encoder_2").glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    cache = ComponentCache()
    with torch.inference_mode(), pytest.raises(ValidationError) as info:
        load(folder, G("torchao", "int8_weight_only"), device="cpu", cache=cache)
    assert info.value.codes == ["weights_unreadable"]
    problem = info.value.problems[0]
    assert problem.component == "text_encoder_2" and shard.name in problem.message and "truncated" in problem.message
    assert created_models == [] and len(cache) == 0  # nothing was even constructed


def test_shard_truncated_after_validation(sharded_flux, tmp_path, created_models):
    folder = shutil.copytree(sharded_flux, tmp_path / "sharded-flux")
    cache = ComponentCache()
    _warm(cache, folder)
    keys = cache.keys()
    spec = G("torchao", "int8_weight_only")  # every text encoder loads fresh: not in the cache yet
    plan = plan_load(folder, spec, device="cpu")
    shard = sorted((folder / "text_encoder_2").glob("model-*.safetensors"))[1]
    intact = shard.read_bytes()
    created_models.clear()
    rss_before, tensors_before = rss(), live_tensor_bytes()
    shard.write_bytes(intact[: len(intact) // 2])  # the download is still being written

    with torch.inference_mode(), pytest.raises(LoadError) as info:
        load_plan(plan, cache=cache)
    error = info.value
    assert error.component == "text_encoder_2"
    assert error.files == [str(shard)], "the error names the broken shard"
    assert "text_encoder_2" in str(error) and shard.name in str(error)
    assert_nothing_survives(error, created_models, cache, keys, rss_before, tensors_before)

    shard.write_bytes(intact)
    with torch.inference_mode():
        result = load(folder, spec, device="cpu", cache=cache)
    assert {r["component"]: r["action"] for r in result.rows}["text_encoder_2"] == "quantize"
    assert len(cache) == len(keys) + 3  # the three quantized encoders/transformer, fresh this time


# -- 2. a GGUF file with a wrong tensor shape ----------------------------------------------------------------
def test_gguf_with_wrong_tensor_shape(tiny_flux, flux_gguf, tmp_path, created_models):
    bad = _write_gguf_with_wrong_shape(
        tiny_flux, tmp_path / "gguf" / "tiny-flux-transformer-F16.gguf", "x_embedder.weight"
    )
    shutil.copy(flux_gguf, tmp_path / "gguf" / flux_gguf.name)
    roots = [tmp_path / "gguf"]
    cache = ComponentCache()
    _warm(cache, tiny_flux)
    keys = cache.keys()
    spec = ComponentMap.make(
        {"transformer": G("gguf", "from_file", gguf_file=bad.name), "text_encoder_2": G("torchao", "int8_weight_only")}
    )
    plan = plan_load(tiny_flux, spec, device="cpu", gguf_roots=roots)  # the parameter count matches
    created_models.clear()
    rss_before, tensors_before = rss(), live_tensor_bytes()

    with torch.inference_mode(), pytest.raises(LoadError) as info:
        load_plan(plan, cache=cache)
    error = info.value
    assert error.component == "transformer"
    assert error.files == [str(bad)], "a GGUF component's error names the .gguf file"
    assert bad.name in str(error) and "x_embedder.weight" in str(error)
    assert_nothing_survives(error, created_models, cache, keys, rss_before, tensors_before)

    good = ComponentMap.make(
        {
            "transformer": G("gguf", "from_file", gguf_file=flux_gguf.name),
            "text_encoder_2": G("torchao", "int8_weight_only"),
        }
    )
    with torch.inference_mode():
        result = load(tiny_flux, good, device="cpu", gguf_roots=roots, cache=cache)
    assert {r["component"]: r["action"] for r in result.rows}["transformer"] == "gguf"


# -- 3. an exception raised inside a quantizer ------------------------------------------------------------------
def _break_torchao_quantizer(monkeypatch, after: int, held: list | None = None):
    """torchao raises after quantizing `after` parameters of the transformer: in diffusers' quantizer
    (a weight quantized whole) and in the row quantizer the default streamed load uses (a weight
    quantized by rows: the first call per weight asks for its sample)."""
    from diffusers.quantizers.torchao.torchao_quantizer import TorchAoHfQuantizer

    from pipequant.resolver.known.backends.torchao import _AORows

    original, original_rows = TorchAoHfQuantizer.create_quantized_param, _AORows.sample
    calls = [0]

    def count_and_break(params: int) -> None:
        calls[0] += params
        if calls[0] > after:
            if held is not None:
                held.append(live_tensor_bytes())
            raise RuntimeError("injected failure inside the torchao quantizer")

    def create_quantized_param(self, *args, **kwargs):
        count_and_break(1)
        return original(self, *args, **kwargs)

    def sample(self, module, weight):
        count_and_break(1)
        return original_rows(self, module, weight)

    monkeypatch.setattr(TorchAoHfQuantizer, "create_quantized_param", create_quantized_param)
    monkeypatch.setattr(_AORows, "sample", sample)

    def restore():
        monkeypatch.setattr(TorchAoHfQuantizer, "create_quantized_param", original)
        monkeypatch.setattr(_AORows, "sample", original_rows)

    return restore


def test_exception_inside_a_quantizer(flux_20m, monkeypatch, created_models):
    cache = ComponentCache()
    _warm(cache, flux_20m)
    keys = cache.keys()
    # text_encoder (transformers' quantizer) loads fresh and completes; the transformer fails.
    spec = G("torchao", "int8_weight_only", components=["text_encoder", "transformer"])
    held: list[int] = []
    restore = _break_torchao_quantizer(monkeypatch, after=60, held=held)
    # Warm the failing path once too (first-time imports and kernels are not a leak).
    with torch.inference_mode(), pytest.raises(LoadError):
        load(flux_20m, spec, device="cpu", cache=cache)
    restore()
    restore = _break_torchao_quantizer(monkeypatch, after=60, held=held)
    created_models.clear()
    held.clear()
    rss_before, tensors_before = rss(), live_tensor_bytes()

    with torch.inference_mode(), pytest.raises(LoadError) as info:
        load(flux_20m, spec, device="cpu", cache=cache)
    error = info.value
    assert error.component == "transformer"
    weights = flux_20m / "transformer" / "diffusion_pytorch_model.safetensors"
    assert error.files == [str(weights)] and weights.name in str(error)
    assert "injected failure inside the torchao quantizer" in str(error)
    assert held and held[0] - tensors_before > 15 * MB, "the failed load held too little for the checks to mean much"
    assert_nothing_survives(error, created_models, cache, keys, rss_before, tensors_before)

    restore()
    with torch.inference_mode():
        result = load(flux_20m, spec, device="cpu", cache=cache)
    rows = {r["component"]: r for r in result.rows}
    assert (
        rows["transformer"]["action"] == "quantize"
        and rows["transformer"]["bytes"] < rows["transformer"]["bytes_before"]
    )


@pytest.mark.cuda
@pytest.mark.parametrize("where", ["quantizer", "placement"])
def test_failed_load_returns_gpu_memory(flux_20m, monkeypatch, where):
    """On GPU, memory_allocated is back to its baseline after a failure inside the bitsandbytes
    quantizer (which puts weights on the GPU as it goes) or while moving the pipeline there."""
    from diffusers import AutoencoderKL
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    spec = G("bitsandbytes_4bit", "nf4", components=["transformer"])
    with torch.inference_mode():
        load(flux_20m, spec, device="cuda", cache=None)  # warm: CUDA context, kernels, bnb's lookup tables
    gc.collect()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    held: list[int] = []
    if where == "quantizer":
        original = BnB4BitDiffusersQuantizer.create_quantized_param
        calls = [0]

        def create_quantized_param(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] > 30:  # of the 62 Linear weights
                held.append(torch.cuda.memory_allocated())
                raise RuntimeError("injected failure inside the bitsandbytes quantizer")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(BnB4BitDiffusersQuantizer, "create_quantized_param", create_quantized_param)
    else:

        def refuse(self, *args, **kwargs):
            held.append(torch.cuda.memory_allocated())
            raise RuntimeError("injected failure while moving the VAE")

        monkeypatch.setattr(AutoencoderKL, "to", refuse)
    cache = ComponentCache()
    with torch.inference_mode(), pytest.raises(LoadError) as info:
        load(flux_20m, spec, device="cuda", cache=cache)
    assert info.value.component == ("transformer" if where == "quantizer" else "pipeline")
    assert held and held[0] - baseline > 1 * MB, "the failed load held no GPU memory worth checking"
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == baseline
    assert len(cache) == 0
    monkeypatch.undo()
    with torch.inference_mode():
        result = load(flux_20m, spec, device="cuda", cache=cache)
    assert str(next(result.pipeline.transformer.parameters()).device).startswith("cuda")


# -- the cache under pressure -------------------------------------------------------------------------------
class RecordingCache(ComponentCache):
    """A ComponentCache that checks the budget invariant after every store and records the access
    stream, so an independent LRU model can be replayed against it."""

    def __init__(self, budget: int):
        super().__init__(budget)
        self.events: list[tuple[str, object, int]] = []
        self.overshoot = 0

    def get(self, key):
        entry = super().get(key)
        self.events.append(("get", key, 0 if entry is None else entry.nbytes))
        return entry

    def put(self, key, module, nbytes, report):
        super().put(key, module, nbytes, report)
        self.events.append(("put", key, nbytes))
        assert self.total_bytes <= self.budget_bytes + nbytes, "over budget by more than the newest component"
        self.overshoot = max(self.overshoot, self.total_bytes - self.budget_bytes)


def _lru_model(events, budget: int) -> list:
    model: OrderedDict = OrderedDict()
    for kind, key, nbytes in events:
        if kind == "get" and key in model:
            model.move_to_end(key)
        elif kind == "put":
            model[key] = nbytes
            model.move_to_end(key)
            while sum(model.values()) > budget and len(model) > 1:
                model.popitem(last=False)
    return list(model)


def test_cache_evicts_least_recently_used_within_budget(tiny_flux):
    plans = {
        "bf16": None,
        "ao-int8": G("torchao", "int8_weight_only"),
        "quanto-int8": G("quanto", "int8"),
        "ao-fp8": G("torchao", "float8_weight_only", components=["transformer", "text_encoder_2"]),
    }
    sizes = {}
    with torch.inference_mode():
        for name, spec in plans.items():
            result = load(tiny_flux, spec, device="cpu", cache=None)
            sizes[name] = sum(r["bytes"] for r in result.rows if r["action"] != "not a model")
    largest_component = 2 * MB
    budget = sizes["bf16"] + sizes["ao-int8"] + 64 * 1024  # room for two plans, not three
    assert sum(sizes.values()) > budget + largest_component  # the sequence really is over budget
    cache = RecordingCache(budget)
    refs: dict[str, list] = {}
    reused: dict[str, list[bool]] = {}
    sequence = ["bf16", "ao-int8", "bf16", "quanto-int8", "bf16", "ao-fp8", "ao-int8", "bf16"]
    with torch.inference_mode():
        for name in sequence:
            result = load(tiny_flux, plans[name], device="cpu", cache=cache)
            reused.setdefault(name, []).append(
                all(r.get("reused") for r in result.rows if r["action"] != "not a model")
            )
            refs.setdefault(name, []).extend(
                weakref.ref(getattr(result.pipeline, c)) for c in ("transformer", "text_encoder_2")
            )
            del result
            assert cache.total_bytes <= budget + largest_component
            assert cache.keys() == _lru_model(cache.events, budget)
    assert cache.overshoot <= largest_component
    # bf16 stayed recent through the next two loads and was reused whole; by its fourth load the
    # fp8 and int8 plans had used only its CLIP encoder and VAE, so its transformer and T5 had
    # become the least recently used entries and were evicted.
    assert reused["bf16"] == [False, True, True, False]
    # ao-int8 was least recently used when quanto-int8 loaded, so it was evicted and loaded again.
    assert reused["ao-int8"] == [False, False]
    # Evicted components are freed, not just forgotten (nothing else holds the first loads).
    gc.collect()
    assert all(r() is None for r in refs["quanto-int8"]), "evicted modules are still alive"
    cache.clear()


def test_cache_keeps_only_the_newest_when_the_budget_is_tiny(tiny_flux):
    cache = RecordingCache(budget=1)  # smaller than any component
    with torch.inference_mode():
        result = load(tiny_flux, G("torchao", "int8_weight_only"), device="cpu", cache=cache)
    last_put = [key for kind, key, _ in cache.events if kind == "put"][-1]
    assert cache.keys() == [last_put]
    assert cache.total_bytes == tensor_bytes(getattr(result.pipeline, last_put[1]))


# -- interrupts during sampling --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_pending_interrupt():
    """An interrupt a failed test left pending must not stop another test's sampling."""
    yield
    host._interrupt.clear()


@pytest.fixture(scope="module")
def loaded_flux(tiny_flux):
    with torch.inference_mode():
        return load(tiny_flux, G("torchao", "int8_weight_only", components=["transformer"]), device="cpu", cache=None)


SAMPLE = dict(
    prompt="a cat",
    negative_prompt="",
    steps=4,
    guidance_scale=3.5,
    width=32,
    height=32,
    seed=7,
    batch_size=1,
    max_sequence_length=16,
)


class _Steps:
    """Stands in for ComfyUI's ProgressBar; calls `at_step(step)` from the sampler's step callback."""

    def __init__(self, at_step):
        self.at_step, self.seen = at_step, []

    def __call__(self, total):
        return self

    def update(self, value, total):
        self.seen.append(value)
        self.at_step(value)


def _count_forwards(pipeline) -> tuple[list, object]:
    calls: list = []
    handle = pipeline.transformer.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_interrupt_stops_within_one_step_and_the_pipeline_samples_again(loaded_flux, monkeypatch):
    with torch.inference_mode():
        (reference,) = PipeQuantSampler().sample(loaded_flux, **SAMPLE)
    steps = _Steps(lambda step: host.request_interrupt() if step == 1 else None)
    monkeypatch.setattr(host, "Progress", steps)
    calls, handle = _count_forwards(loaded_flux.pipeline)
    try:
        with torch.inference_mode(), pytest.raises(host.Interrupted):
            PipeQuantSampler().sample(loaded_flux, **SAMPLE)
        assert steps.seen == [1] and len(calls) == 1, "sampling went on after the interrupt"
        calls.clear()
        steps.at_step = lambda step: None
        with torch.inference_mode():
            (again,) = PipeQuantSampler().sample(loaded_flux, **SAMPLE)
    finally:
        handle.remove()
    assert len(calls) == SAMPLE["steps"]
    assert torch.equal(again, reference), "the interrupted run left state behind in the pipeline"


def test_comfyui_interrupt_from_another_thread(loaded_flux, monkeypatch):
    """ComfyUI's /interrupt sets a flag from the server thread; model_management raises
    InterruptProcessingException at the next check, which the sampler makes after every step."""

    class InterruptProcessingException(Exception):
        pass

    class FakeModelManagement:
        flag = False

        def interrupt_current_processing(self, value=True):
            self.flag = value

        def throw_exception_if_processing_interrupted(self):
            if self.flag:
                self.flag = False
                raise InterruptProcessingException()

    mm = FakeModelManagement()

    def server_interrupts(step):
        if step == 2:
            t = threading.Thread(target=mm.interrupt_current_processing)
            t.start()
            t.join()

    steps = _Steps(server_interrupts)
    monkeypatch.setattr(host, "model_management", mm)
    monkeypatch.setattr(host, "Progress", steps)
    calls, handle = _count_forwards(loaded_flux.pipeline)
    try:
        with torch.inference_mode(), pytest.raises(InterruptProcessingException):
            PipeQuantSampler().sample(loaded_flux, **SAMPLE)
        assert steps.seen == [1, 2] and len(calls) == 2
        steps.at_step = lambda step: None
        calls.clear()
        with torch.inference_mode():
            (image,) = PipeQuantSampler().sample(loaded_flux, **SAMPLE)
    finally:
        handle.remove()
    assert len(calls) == SAMPLE["steps"] and torch.isfinite(image).all()
