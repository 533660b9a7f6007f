"""Muted and bypassed nodes in a UI-format workflow, handled as ComfyUI's editor queues them."""

from __future__ import annotations

from pipequant.runner.execute import ALL_NODES
from pipequant.runner.workflow import BYPASSED, MUTED, to_api

CONFIG = "PIPELINE_QUANT_CONFIG"


def _workflow(map_mode: int = 0) -> dict:
    """Backend (1) -> Per-Component Map (2, in the given mode) -> Load (3)."""
    return {
        "nodes": [
            {
                "id": 1,
                "type": "PipeQuantBackend",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "quant_config", "type": CONFIG, "links": [10]}],
                "widgets_values": ["torchao", "int8_weight_only", "auto", "", "{}", "none"],
            },
            {
                "id": 2,
                "type": "PipeQuantComponentMap",
                "mode": map_mode,
                "inputs": [
                    {"name": "config", "type": CONFIG, "link": 10},
                    {"name": "map", "type": CONFIG, "link": None},
                ],
                "outputs": [{"name": "quant_map", "type": CONFIG, "links": [11]}],
                "widgets_values": ["transformer"],
            },
            {
                "id": 3,
                "type": "PipeQuantLoadPipeline",
                "mode": 0,
                "inputs": [{"name": "quantization", "type": CONFIG, "link": 11}],
                "outputs": [{"name": "pipeline", "type": "DIFFUSERS_PIPELINE", "links": []}],
                "widgets_values": ["tiny-flux", "bfloat16", "cpu", "none", False],
            },
        ],
        "links": [[10, 1, 0, 2, 0, CONFIG], [11, 2, 0, 3, 0, CONFIG]],
    }


def test_an_active_map_stays_in_the_chain():
    prompt = to_api(_workflow(), ALL_NODES)
    assert prompt["3"]["inputs"]["quantization"] == ["2", 0]
    assert prompt["2"]["inputs"]["config"] == ["1", 0]


def test_a_bypassed_node_passes_its_input_of_the_same_type_through():
    prompt = to_api(_workflow(BYPASSED), ALL_NODES)
    assert "2" not in prompt
    assert prompt["3"]["inputs"]["quantization"] == ["1", 0]


def test_a_muted_node_is_dropped_and_inputs_linked_to_it_stay_unconnected():
    prompt = to_api(_workflow(MUTED), ALL_NODES)
    assert "2" not in prompt
    assert "quantization" not in prompt["3"]["inputs"]
    assert prompt["3"]["inputs"]["model"] == "tiny-flux"


def test_a_bypassed_node_without_a_matching_input_leaves_the_input_unconnected():
    data = _workflow(BYPASSED)
    data["nodes"][1]["inputs"][0]["link"] = None  # nothing to pass through
    prompt = to_api(data, ALL_NODES)
    assert "quantization" not in prompt["3"]["inputs"]
