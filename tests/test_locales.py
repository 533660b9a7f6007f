"""locales/en/nodeDefs.json (read by ComfyUI's /i18n) matches the node declarations."""

from __future__ import annotations

import json

from pipequant.nodes import NODE_CLASS_MAPPINGS
from pipequant.nodes.locale import NODE_DEFS, node_defs


def test_node_defs_file_matches_the_nodes():
    on_disk = json.loads(NODE_DEFS.read_text())
    assert on_disk == node_defs(), (
        "locales/en/nodeDefs.json is out of date: regenerate it with `python -m pipequant.nodes.locale`"
    )


def test_every_node_and_input_has_a_name_and_every_input_a_tooltip():
    defs = json.loads(NODE_DEFS.read_text())
    assert set(defs) == set(NODE_CLASS_MAPPINGS)
    for node_id, entry in defs.items():
        assert entry["display_name"] and entry["inputs"], node_id
        for name, spec in entry["inputs"].items():
            assert spec.get("tooltip"), f"{node_id}.{name} has no tooltip"
