"""The pack's structure rules, checked on the source: one home for each rule.

Per-backend behaviour lives in resolver/backends/ (the rest of the resolver asks the backend
object), and the derived facts each backend declares agree with what the libraries really do.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipequant.resolver import catalogue

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAME = re.compile(r'"(gguf|quanto|torchao)"|bitsandbytes')


def test_no_backend_name_outside_the_backends_folder():
    """The issue's check: `grep -nE '"(gguf|quanto|torchao)"|bitsandbytes' resolver/*.py` finds nothing."""
    hits = [f"{path.name}:{n}: {line.strip()}" for path in sorted((ROOT / "resolver").glob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if BACKEND_NAME.search(line)]
    assert hits == []


def test_the_catalogue_lists_every_backend_module():
    """Adding a backend is one module in resolver/backends/ plus one line in its __init__.py."""
    from pipequant.resolver.backends import ALL_BACKENDS

    modules = {p.stem for p in (ROOT / "resolver" / "backends").glob("*.py")} - {"__init__", "base"}
    assert {type(b).__module__.rsplit(".", 1)[1] for b in ALL_BACKENDS} == modules


@pytest.mark.parametrize("name,expands", [("bitsandbytes_4bit", False), ("bitsandbytes_8bit", False),
                                          ("torchao", True), ("quanto", True)])
def test_global_expansion_follows_diffusers_own_signature_check(name, expands):
    """Computed from the two libraries' config classes; diffusers refuses exactly those that expand."""
    from diffusers import PipelineQuantizationConfig

    backend = catalogue.get_backend(name)
    assert backend.expands_per_library() is expands
    kwargs = {"bitsandbytes_4bit": {"load_in_4bit": True}, "bitsandbytes_8bit": {"load_in_8bit": True},
              "torchao": {"quant_type": None}, "quanto": {"weights_dtype": "int8"}}[name]
    if expands:
        with pytest.raises(ValueError, match="signatures"):
            PipelineQuantizationConfig(quant_backend=name, quant_kwargs=kwargs)
    else:
        PipelineQuantizationConfig(quant_backend=name, quant_kwargs=kwargs)


def test_advice_comes_from_the_catalogue():
    assert catalogue.quantizers_for("transformers") == ["bitsandbytes", "torchao", "quanto", "sdnq"]
    assert [b.name for b in catalogue.file_backends()] == ["gguf"]
    assert catalogue.backend_for_saved("bitsandbytes").family_name == "bitsandbytes"
    assert catalogue.backend_for_saved("quanto").name == "quanto"
    assert catalogue.backend_for_saved(None) is None
    assert catalogue.one_of(["a", "b", "c"]) == "a, b or c" and catalogue.one_of(["a"]) == "a"


NODE_IMPORT = re.compile(r"^\s*(from\s+(\.+|pipequant\.)nodes(\.\w+)?\s+import\s+(.+)|import\s+pipequant\.nodes\S*)", re.M)
# What may cross from outside nodes/ into it: the node registry (the pack's entry point and the
# runner, which executes workflows as ComfyUI does) and the routes' registration (entry point).
ALLOWED = {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "routes as _routes"}


def test_nothing_outside_nodes_reaches_into_node_internals():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("nodes", "tests", "test-artifacts") or rel.parts[0].startswith("."):
            continue
        for match in NODE_IMPORT.finditer(path.read_text()):
            names = {n.strip() for n in (match.group(4) or "?").split(",")}
            if match.group(3) or not names <= ALLOWED:
                found.append(f"{rel}: {match.group(0).strip()}")
    assert found == []


def test_the_resolver_never_imports_comfyui_or_nodes():
    pattern = re.compile(r"^\s*(from|import)\s+(folder_paths|comfy\b|server\b|\.\.nodes|pipequant\.nodes)", re.M)
    assert [p.name for p in (ROOT / "resolver").rglob("*.py") if pattern.search(p.read_text())] == []
