"""The stand-in ModelPatcher PipeQuant puts in ComfyUI's loaded-model list answers what newer
cores ask in free_memory's loop (Dynamic VRAM, pinned memory), without ComfyUI: the real-server
tests (test_comfyui_memory.py) run on 0.3.64, which asks less."""

from __future__ import annotations

import sys
import types

import torch

from pipequant.nodes import comfy_memory
from pipequant.nodes.comfy_memory import ComponentHandle


def test_the_handle_answers_newer_cores_without_releasing_anything():
    module = torch.nn.Linear(8, 8)
    handle = ComponentHandle(module, "tiny/transformer", "cpu", 8 * 9 * 4)
    # Calls made by newer cores' free_memory() (comfy/model_management.py, ComfyUI ≈ 0.15+), in order.
    assert handle.is_dynamic() is False  # so it is never skipped as "pages itself in on demand"
    assert handle.loaded_size() == handle.model_size() == 288
    assert handle.partially_unload_ram(10**9) == 0
    resident, total = handle.model_mmap_residency(free=True)
    assert (resident, total) == (0, 0)
    assert handle.pinned_memory_size() == 0
    assert handle.model is module  # none of these released the component


def test_the_dynamic_vram_note_follows_the_core(monkeypatch):
    assert comfy_memory.dynamic_vram_note() is None  # no ComfyUI here
    for on in (True, False):
        cli_args = types.ModuleType("comfy.cli_args")
        cli_args.enables_dynamic_vram = lambda on=on: on
        comfy = types.ModuleType("comfy")
        comfy.cli_args = cli_args
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
        note = comfy_memory.dynamic_vram_note()
        assert (note is not None) == on
        if on:
            assert "not paged" in note and "offload" in note
