"""The pack's structure rules, checked on the source: one home for each rule.

Per-backend behaviour lives in resolver/known/backends/ (the rest of the resolver asks the backend
object), and the derived facts each backend declares agree with what the libraries really do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipequant.resolver.known import catalogue

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAME = re.compile(r'"(gguf|quanto|torchao)"|bitsandbytes')


def test_no_backend_name_outside_the_backends_folder():
    """The issue's check: `grep -nE '"(gguf|quanto|torchao)"|bitsandbytes' resolver/` (outside known/backends/) finds nothing."""
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((ROOT / "resolver").rglob("*.py"))
        if "backends" not in path.relative_to(ROOT / "resolver").parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if BACKEND_NAME.search(line)
    ]
    assert hits == []


def test_the_catalogue_lists_every_backend_module():
    """Adding a backend is one module in resolver/known/backends/ plus one line in its __init__.py."""
    from pipequant.resolver.known.backends import ALL_BACKENDS

    modules = {p.stem for p in (ROOT / "resolver" / "known" / "backends").glob("*.py")} - {"__init__", "base"}
    assert {type(b).__module__.rsplit(".", 1)[1] for b in ALL_BACKENDS} == modules


@pytest.mark.parametrize(
    "name,expands", [("bitsandbytes_4bit", False), ("bitsandbytes_8bit", False), ("torchao", True), ("quanto", True)]
)
def test_global_expansion_follows_diffusers_own_signature_check(name, expands):
    """Computed from the two libraries' config classes; diffusers refuses exactly those that expand."""
    from diffusers import PipelineQuantizationConfig

    backend = catalogue.get_backend(name)
    assert backend.expands_per_library() is expands
    kwargs = {
        "bitsandbytes_4bit": {"load_in_4bit": True},
        "bitsandbytes_8bit": {"load_in_8bit": True},
        "torchao": {"quant_type": None},
        "quanto": {"weights_dtype": "int8"},
    }[name]
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


NODE_IMPORT = re.compile(
    r"^\s*(from\s+(\.+|pipequant\.)nodes(\.\w+)?\s+import\s+(.+)|import\s+pipequant\.nodes\S*)", re.M
)
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
    assert found == [], "\n".join(found)


def test_the_resolver_never_imports_comfyui_or_nodes():
    pattern = re.compile(r"^\s*(from|import)\s+(folder_paths|comfy\b|server\b|\.\.nodes|pipequant\.nodes)", re.M)
    assert [p.name for p in (ROOT / "resolver").rglob("*.py") if pattern.search(p.read_text())] == []


# -- the floor plan: folders in the order a request travels; imports flow only forward ----------
ORDER = ("known", "links", "files", "decide", "run", "keep", "measure")  # README "Layout"; flat modules are the floor
RESOLVER = ROOT / "resolver"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(["pipequant"] + (parts[:-1] if parts[-1] == "__init__" else parts))


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every pipequant module `path` imports, lazy imports included, TYPE_CHECKING blocks excluded."""
    import ast

    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("pipequant.")}


def _resolver_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in RESOLVER.rglob("*.py")}
    return {name: _imports(path, set(paths)) & set(paths) for name, path in paths.items()}


def _stage(module: str) -> int:
    part = module.split(".")[2] if module.count(".") >= 2 else ""
    return ORDER.index(part) + 1 if part in ORDER else 0


def test_the_resolver_has_few_flat_modules_and_small_folders():
    flat = [p.name for p in RESOLVER.glob("*.py")]
    assert len(flat) <= 10, flat
    assert {p.name for p in RESOLVER.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ORDER)
    for folder in ORDER:
        modules = [p for p in (RESOLVER / folder).glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 8, (folder, [p.name for p in modules])


def test_imports_flow_one_way_along_the_data_path():
    """A resolver module imports only from its own folder, the flat floor, or folders earlier in ORDER."""
    backwards = [
        f"{m} -> {t}"
        for m, targets in _resolver_graph().items()
        if m != "pipequant.resolver"
        for t in targets
        if _stage(t) > _stage(m)
    ]
    assert backwards == []


def test_no_import_cycle_in_the_resolver():
    graph = _resolver_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own children (the __init__'s re-exports)
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_outside_the_resolver_only_its_public_api_is_imported():
    """nodes/, runner/, bench/ and testing/ import `pipequant.resolver`, its flat floor, or a folder's
    __init__, and only names that __init__ declares in __all__ (its public API)."""
    import ast

    found = []
    for path in [p for folder in ("nodes", "runner", "bench", "testing") for p in (ROOT / folder).rglob("*.py")]:
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                targets = [(module, [a.name for a in node.names])]
            else:
                continue
            for module, names in targets:
                parts = (module or "").split(".")
                if parts[:2] != ["pipequant", "resolver"]:
                    continue
                flat = len(parts) == 3 and (RESOLVER / f"{parts[2]}.py").exists()  # the floor is public
                if flat:
                    continue
                if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ORDER):
                    found.append(f"{path.relative_to(ROOT)}: {module}")
                elif len(parts) == 3:
                    declared = _declared(parts[2])
                    found += [
                        f"{path.relative_to(ROOT)}: {module}.{n} (not in __all__)"
                        for n in names or []
                        if n not in declared
                    ]
    assert found == [], "\n".join(found)


def _declared(folder: str) -> set[str]:
    import ast

    tree = ast.parse((RESOLVER / folder / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()
