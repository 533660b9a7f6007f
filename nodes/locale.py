"""locales/en/nodeDefs.json, generated from the node declarations (the one home of names and
tooltips). ComfyUI serves every custom node's `locales/<lang>/nodeDefs.json` at `/i18n`; the
editor shows node names, descriptions and tooltips from it, and translators start from it.

Regenerate after changing a node's inputs or tooltips: `python -m pipequant.nodes.locale`.
"""

from __future__ import annotations

import json
from pathlib import Path

NODE_DEFS = Path(__file__).resolve().parent.parent / "locales" / "en" / "nodeDefs.json"


def _inputs(cls) -> dict:
    out = {}
    for group in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(group, {}).items():
            entry = {"name": name}
            if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("tooltip"):
                entry["tooltip"] = spec[1]["tooltip"]
            out[name] = entry
    return out


def _outputs(cls) -> dict:
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    tooltips = getattr(cls, "OUTPUT_TOOLTIPS", ()) or ()
    out = {}
    for i, name in enumerate(names):
        entry = {"name": name}
        if i < len(tooltips):
            entry["tooltip"] = tooltips[i]
        out[str(i)] = entry
    return out


def node_defs() -> dict:
    from . import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    defs = {}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        entry = {"display_name": NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id)}
        if getattr(cls, "DESCRIPTION", ""):
            entry["description"] = cls.DESCRIPTION
        entry["inputs"] = _inputs(cls)
        entry["outputs"] = _outputs(cls)
        defs[node_id] = entry
    return defs


def render() -> str:
    return json.dumps(node_defs(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    NODE_DEFS.write_text(render())
    print(f"wrote {NODE_DEFS}")
