"""The editor's routes are called while a prompt is loading a pipeline.

ComfyUI serves HTTP on its event loop while the prompt worker thread runs nodes. Here a Load node
runs in a thread, held in the middle of its load (after its first component), while `validate`,
`estimate`, `components` and `backends` are called concurrently, over HTTP and straight from
threads; then the load goes on while the requests keep coming. Every answer must equal the one
given when nothing else was running, the routes must not touch the component cache, and the load
must finish with exactly the cache entries it would have made alone.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import routes_client

from pipequant.nodes import host, routes
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.resolver import COMPONENT_CACHE, BackendSpec, ComponentMap, plan_load
from pipequant.resolver.keep.load import cache_key

SPEC = ComponentMap.make(
    {
        "transformer": BackendSpec.make("torchao", "int8_weight_only"),
        "text_encoder_2": BackendSpec.make("torchao", "int8_weight_only"),
    }
)
EDITOR_SPEC = {
    "kind": "map",
    "node": 4,
    "component": "transformer",
    "config": {
        "kind": "global",
        "node": 3,
        "backend": "torchao",
        "quant_type": "int8_weight_only",
        "compute_dtype": "auto",
        "components": "",
        "options": "{}",
    },
    "map": None,
}
BAD_SPEC = {
    "kind": "global",
    "node": 3,
    "backend": "torchao",
    "quant_type": "int4_weight_only",
    "compute_dtype": "float16",
    "components": "transfomer",
    "options": '{"group_size": 100}',
}

REQUESTS = [
    ("POST", "/pipequant/validate", {"model": "tiny-flux", "device": "cpu", "spec": EDITOR_SPEC}),
    ("POST", "/pipequant/validate", {"model": "tiny-flux", "device": "cpu", "spec": BAD_SPEC}),
    ("POST", "/pipequant/estimate", {"model": "tiny-flux", "device": "cpu", "spec": EDITOR_SPEC}),
    ("GET", "/pipequant/components", {"model": "tiny-flux"}),
    ("GET", "/pipequant/components", {"model": "../tiny-flux"}),
    ("GET", "/pipequant/backends", None),
]


async def _burst(rounds: int):
    """All REQUESTS, `rounds` times, concurrently against one server."""
    async with routes_client() as client:

        async def one(method, path, data):
            if method == "GET":
                response = await client.get(path, params=data)
            else:
                response = await client.post(path, json=data)
            return response.status, await response.json()

        return await asyncio.gather(*(one(*r) for _ in range(rounds) for r in REQUESTS))


def _direct(i: int):
    """The same work, called from plain threads (as the executor does under ComfyUI)."""
    which = i % 4
    if which == 0:
        return routes.check({"model": "tiny-flux", "device": "cpu", "spec": EDITOR_SPEC})
    if which == 1:
        return routes.check({"model": "tiny-flux", "device": "cpu", "spec": BAD_SPEC})
    if which == 2:
        return routes.estimate({"model": "tiny-flux", "device": "cpu", "spec": EDITOR_SPEC})
    return routes.components("tiny-flux")


@pytest.fixture
def env(models_root, tiny_flux, monkeypatch):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.delenv("PIPEQUANT_GGUF", raising=False)
    return tiny_flux


def test_routes_during_a_load(env, monkeypatch):
    tiny_flux = env
    # Answers when nothing else runs.
    expected_http = asyncio.run(_burst(1))
    assert [s for s, _ in expected_http] == [200, 200, 200, 200, 400, 200]
    assert expected_http[0][1]["ok"] is True and expected_http[1][1]["ok"] is False
    assert (
        expected_http[2][1]["estimate"]["total"]["bytes_after"]
        < expected_http[2][1]["estimate"]["total"]["bytes_before"]
    )
    expected_direct = [json.dumps(_direct(i), sort_keys=True) for i in range(4)]

    # The entries this load adds, computed without loading.
    plan = plan_load(tiny_flux, SPEC, device="cpu")
    with COMPONENT_CACHE._lock:  # make sure it really loads (nothing of it cached by an earlier test)
        for row in plan.modules():
            COMPONENT_CACHE._entries.pop(cache_key(plan, row.name), None)
    before = set(map(repr, COMPONENT_CACHE.keys()))
    wanted = before | {repr(cache_key(plan, row.name)) for row in plan.modules()}

    midway, go_on = threading.Event(), threading.Event()

    class HoldAfterFirstComponent:
        def __init__(self, total):
            pass

        def update(self, value, total):
            if value == 1:
                midway.set()
                assert go_on.wait(60), "the test never released the load"

    monkeypatch.setattr(host, "Progress", HoldAfterFirstComponent)
    outcome: dict = {}

    def prompt_worker():
        try:
            with torch.inference_mode():  # as ComfyUI runs nodes
                outcome["result"] = PipeQuantLoadPipeline().load("tiny-flux", "bfloat16", "cpu", "none", SPEC)
        except BaseException as exc:  # reported below
            outcome["error"] = exc
        finally:
            midway.set()

    worker = threading.Thread(target=prompt_worker)
    worker.start()
    try:
        assert midway.wait(60) and "error" not in outcome, outcome.get("error")
        during = set(map(repr, COMPONENT_CACHE.keys()))
        # Phase 1: the load is held midway; HTTP requests and direct calls run concurrently.
        with ThreadPoolExecutor(max_workers=4) as pool:
            direct = pool.map(_direct, range(16))
            answers = asyncio.run(_burst(3))
            direct = list(direct)
        assert answers == expected_http * 3
        assert [json.dumps(d, sort_keys=True) for d in direct] == expected_direct * 4
        assert set(map(repr, COMPONENT_CACHE.keys())) == during, "a route changed the component cache"
        # Phase 2: the load goes on while requests keep coming.
        go_on.set()
        rounds = 0
        while worker.is_alive() or rounds == 0:
            assert asyncio.run(_burst(1)) == expected_http
            rounds += 1
    finally:
        go_on.set()
        worker.join(120)
    assert "error" not in outcome, outcome.get("error")
    result, report = outcome["result"]
    rows = {r["component"]: r for r in result.rows}
    assert rows["transformer"]["action"] == "quantize" and rows["text_encoder_2"]["action"] == "quantize"
    assert "torchao" in report
    assert set(map(repr, COMPONENT_CACHE.keys())) == wanted
    # And afterwards the routes still say the same.
    assert asyncio.run(_burst(1)) == expected_http
