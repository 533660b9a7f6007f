"""Disk-cache entries written after the load returns (keep.deferred_write), on the tiny FLUX.

The writer is gated in these tests, so what happens between the load's return and the write is
under the test's control: the entry must be the plain quantized component whatever the pipeline
went through meanwhile, and a reader of the same entry must wait for it, never see it half written.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep.deferred_write import WRITING, snapshot, wait_for_writes
from pipequant.resolver.keep.disk_cache import ENTRY_FILE, STORE, DiskCache
from pipequant.resolver.keep.load import load_plan, plan_load
from pipequant.resolver.keep.save import save_component

SPEC = BackendSpec.make("torchao", "int8_weight_only", components=["transformer"])


def _gated(gate: threading.Event, started: threading.Event):
    def writer(module, folder):
        started.set()
        assert gate.wait(60)
        save_component(module, folder)

    return writer


def _entry_keys(folder) -> set[str]:
    from safetensors import safe_open

    (entry,) = [p for p in (folder / STORE).iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (entry / ENTRY_FILE).is_file()
    keys = set()
    for f in entry.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            keys |= set(h.keys())
    return keys


@pytest.fixture
def plan(tiny_flux):
    return plan_load(tiny_flux, SPEC, device="cpu")


def test_load_returns_before_the_write_and_the_entry_stays_plain(plan, tmp_path):
    gate, started = threading.Event(), threading.Event()
    folder = tmp_path / "cache"
    with torch.inference_mode():
        result = load_plan(
            plan, cache=None, disk_cache=DiskCache(folder, writer=_gated(gate, started)), write_later=True
        )
    row = next(r for r in result.rows if r["component"] == "transformer")
    assert row["disk_cache"] == WRITING  # the load did not wait for the (blocked) writer
    # What a LoRA node or compile could do to the handed-out module before the write runs:
    transformer = result.pipeline.transformer
    transformer.transformer_blocks[0].attn.to_q.lora_probe = torch.nn.Linear(16, 16)
    assert started.wait(60)
    gate.set()
    assert wait_for_writes(60)
    assert row["disk_cache"] == "written"
    keys = _entry_keys(folder)
    assert not any("lora_probe" in k for k in keys)
    # The same tensors as an entry written the synchronous way, before the module left the loader.
    with torch.inference_mode():
        load_plan(plan, cache=None, disk_cache=DiskCache(tmp_path / "reference"))
    assert keys == _entry_keys(tmp_path / "reference")


def test_a_reader_of_the_same_entry_waits_for_the_write(plan, tmp_path):
    gate, started = threading.Event(), threading.Event()
    folder = tmp_path / "cache"
    with torch.inference_mode():
        load_plan(plan, cache=None, disk_cache=DiskCache(folder, writer=_gated(gate, started)), write_later=True)
    assert started.wait(60)
    threading.Timer(1.0, gate.set).start()  # the write finishes while the second load waits on its lock
    with torch.inference_mode():
        second = load_plan(plan, cache=None, disk_cache=DiskCache(folder), write_later=True)
    row = next(r for r in second.rows if r["component"] == "transformer")
    assert row["disk_cache"] == "read"
    assert wait_for_writes(60)
    manifest = json.loads(next((folder / STORE).glob(f"*/{ENTRY_FILE}")).read_text())
    assert manifest["source"]["component"] == "transformer"


def test_a_failed_write_leaves_no_entry_and_says_why(plan, tmp_path):
    def full_disk(module, folder):
        raise OSError(28, "No space left on device")

    folder = tmp_path / "cache"
    with torch.inference_mode():
        result = load_plan(plan, cache=None, disk_cache=DiskCache(folder, writer=full_disk), write_later=True)
    assert wait_for_writes(60)
    row = next(r for r in result.rows if r["component"] == "transformer")
    assert row["disk_cache"] == "not cached" and row["disk_cache_reason"]
    store = folder / STORE  # the cache's own subfolder: no entry in it, no temporary folder left
    leftovers = [p for p in store.iterdir() if p.is_dir()] if store.is_dir() else []
    assert leftovers == []


def test_snapshot_shares_weights_not_structure():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    copy_ = snapshot(model)
    assert copy_[0].weight is model[0].weight and copy_[1].bias is model[1].bias
    model[0].extra = torch.nn.Linear(2, 2)
    assert "0.extra.weight" not in copy_.state_dict()
    model[1].weight = torch.nn.Parameter(torch.zeros(4))  # a replaced parameter stays in the original
    model[1].register_buffer("probe", torch.ones(1))
    model.register_state_dict_post_hook(lambda module, state, prefix, local: state.update(hooked=torch.ones(1)))
    state = copy_.state_dict()
    assert state.keys() == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert state["1.weight"] is not model[1].weight and torch.equal(state["1.weight"], torch.ones(4))
    assert copy_(torch.ones(1, 4)).shape == (1, 4)  # still a working module
