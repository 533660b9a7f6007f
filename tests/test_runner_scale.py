"""The runner on big workflows (issue 22, item 13): the duplicate-key check is linear, and only the
nodes an output needs are validated, as ComfyUI does."""

from __future__ import annotations

import threading
import time

import pytest

from pipequant.resolver.problems import ValidationError
from pipequant.runner.execute import execute
from pipequant.runner.workflow import read_workflow


def _within(seconds, fn, *args, **kwargs):
    out = {}

    def work():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    start = time.perf_counter()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"took longer than {seconds} s"
    return out, time.perf_counter() - start


def test_a_one_megabyte_workflow_with_a_duplicate_key_is_refused_quickly(tmp_path):
    body = ",".join(f'"{i}": {{"class_type": "X", "inputs": {{}}}}' for i in range(25_000))
    path = tmp_path / "big.json"
    path.write_text("{" + body + ', "7": {"class_type": "X", "inputs": {}}}')
    assert path.stat().st_size > 1_000_000
    out, seconds = _within(10, read_workflow, path)
    assert isinstance(out.get("error"), ValidationError) and out["error"].codes == ["workflow_duplicate_id"]
    assert '"7"' in str(out["error"])
    assert seconds < 5


def _load(model="tiny-flux", **inputs):
    fields = {"model": model, "dtype": "float32", "device": "cpu", "offload": "none", **inputs}
    return {"class_type": "PipeQuantLoadPipeline", "inputs": fields}


def test_only_what_an_output_needs_is_validated(monkeypatch, models_root, tiny_flux):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    prompt = {
        "1": _load(),
        "2": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["1", 0]}},
    }
    for i in range(6000):  # loaders that feed nothing: ComfyUI neither checks nor runs them
        prompt[str(100 + i)] = _load(model="no-such-model", dtype="int3")
    out, seconds = _within(60, execute, prompt, validate_only=True)
    assert "error" not in out, out.get("error")
    assert seconds < 15, seconds
    # a broken node that does feed the output is still found
    prompt["1"] = _load(model="no-such-model")
    with pytest.raises(ValidationError) as info:
        execute(prompt, validate_only=True)
    assert [p.field for p in info.value.problems][0].startswith("node 1 ")


def test_a_linked_node_is_validated_however_deep(monkeypatch, models_root, tiny_flux):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    prompt = {
        "1": _load(dtype="int3"),
        "2": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["1", 0]}},
    }
    with pytest.raises(ValidationError) as info:
        execute(prompt, validate_only=True)
    assert [p.field for p in info.value.problems] == ["node 1 (Load Quantized Pipeline).dtype"]


def test_many_inputs_through_one_long_reroute_chain_are_converted_quickly():
    """UI format: a Reroute chain 3000 long feeding 3000 inputs is walked once, not once per input."""
    from pipequant.runner.execute import ALL_NODES
    from pipequant.runner.workflow import to_api

    n = 3000
    nodes = [{"id": 1, "type": "PipeQuantLoadPipeline", "widgets_values": ["tiny-flux"], "mode": 0}]
    links = []
    for i in range(n):  # Reroute 1000+i fed by the previous one (or the loader)
        links.append([i + 1, 1 if i == 0 else 1000 + i - 1, 0, 1000 + i, 0, "DIFFUSERS_PIPELINE"])
        nodes.append({"id": 1000 + i, "type": "Reroute", "inputs": [{"name": "", "link": i + 1}], "mode": 0})
    for j in range(n):  # reports all fed by the last Reroute
        link_id = 100_000 + j
        links.append([link_id, 1000 + n - 1, 0, 200_000 + j, 0, "DIFFUSERS_PIPELINE"])
        nodes.append(
            {"id": 200_000 + j, "type": "PipeQuantMemoryReport", "inputs": [{"name": "pipeline", "link": link_id}]}
        )
    out, seconds = _within(30, to_api, {"nodes": nodes, "links": links}, ALL_NODES)
    assert "error" not in out, out.get("error")
    prompt = out["value"]
    assert prompt["200000"]["inputs"]["pipeline"] == ["1", 0] and len(prompt) == n + 1
    assert seconds < 10, seconds
