"""The editor's live checks beside loads, LoRA applies and saves, in threads (issue 22, item 4):
the libraries' empty-weight contexts must not reach other threads' modules nor stay patched."""

from __future__ import annotations

import threading

import torch


def test_an_empty_weight_context_in_one_thread_does_not_reach_another():
    """accelerate's init_empty_weights (diffusers loads, the quantizers' layer replacement in the
    estimate) and peft's copy (LoRA injection), entered in worker threads, overlapping and exited
    out of order, as the live checks and a load do."""
    import accelerate
    from peft.utils.integrations import init_empty_weights as peft_empty

    from pipequant.resolver.run.context import diffusers_context

    with diffusers_context():  # what a load does first
        pass
    pristine = torch.nn.Module.register_parameter
    a_in, b_in, a_out, main_built = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with accelerate.init_empty_weights():
            seen["a"] = torch.nn.Linear(4, 4).weight.device.type
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with peft_empty():
            seen["b"] = torch.nn.Linear(4, 4).weight.device.type
            b_in.set()
            a_out.wait(10)  # a leaves first: the wrong order for a process-wide patch
            main_built.wait(10)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    b_in.wait(10)
    seen["main, while both are inside"] = torch.nn.Linear(4, 4).weight.device.type
    main_built.set()
    for t in threads:
        t.join(10)
    seen["main, after"] = torch.nn.Linear(4, 4).weight.device.type
    assert seen == {"a": "meta", "b": "meta", "main, while both are inside": "cpu", "main, after": "cpu"}
    assert torch.nn.Module.register_parameter is pristine
    with accelerate.init_on_device(torch.device("meta")):  # the direct entry point too
        assert torch.nn.Linear(2, 2).weight.device.type == "meta"
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_live_checks_hammered_during_loads_loras_and_saves(tmp_path, tiny_flux, monkeypatch):
    """A short run of bench/live_checks.py (`python -m bench.live_checks --seconds 300` for the long one)."""
    from bench.live_checks import stress

    monkeypatch.setenv("PIPEQUANT_MODELS", "")  # stress() points it at the pipeline; restored after
    monkeypatch.setenv("PIPEQUANT_HF_CACHE", "off")

    tally = stress(6, tiny_flux, tmp_path, route_threads=2)
    assert tally.faults == [], tally.faults[0]
    assert tally.counts.get("load", 0) >= 1 and tally.counts.get("final load") == 1
    assert sum(n for what, n in tally.counts.items() if what.startswith("route ")) >= 3
