"""What the Comfy registry and ComfyUI-Manager read: [tool.comfy], classifiers, requirements."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_tool_comfy_has_what_the_registry_needs():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "PipeQuant"
    assert comfy["Icon"].endswith("/docs/icon.png") and (ROOT / "docs" / "icon.png").is_file()
    assert isinstance(comfy["includes"], list)
    assert re.fullmatch(r">=\s*0\.3\.64.*", comfy["requires-comfyui"]), comfy["requires-comfyui"]


def test_classifiers_name_the_os_and_the_accelerator():
    classifiers = PYPROJECT["project"]["classifiers"]
    assert any(c.startswith("Operating System ::") for c in classifiers)
    assert "Environment :: GPU :: NVIDIA CUDA" in classifiers


def _names(requirements) -> dict[str, str]:
    out = {}
    for line in requirements:
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
            out[name] = line
    return out


def test_no_torch_and_no_upper_bounds_on_what_comfyui_shares():
    deps = _names(PYPROJECT["project"]["dependencies"])
    reqs = _names((ROOT / "requirements.txt").read_text().splitlines())
    for found in (deps, reqs):
        assert "torch" not in found and "torchvision" not in found
        for shared in ("transformers", "safetensors"):  # ComfyUI pins these; never pull them down
            assert "<" not in found.get(shared, "") and "==" not in found.get(shared, ""), found[shared]
    # GPL-3.0 SDNQ stays an optional extra
    assert "sdnq" not in deps and "sdnq" not in reqs
    assert PYPROJECT["project"]["optional-dependencies"]["sdnq"] == ["sdnq"]


def test_the_pack_never_runs_pip():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part in ("tests", "bench", ".git", "testing") for part in path.relative_to(ROOT).parts):
            continue
        text = path.read_text()
        if re.search(r"\bpip\b.*\b(main|install)\b\s*\(|subprocess.*\bpip\b|pip\._internal|ensurepip", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_extras_the_readme_installs_exist():
    """Issue 26 item 10: pip warns for an extra the package does not provide (`.[quanto,gguf]`
    after quanto and gguf became plain dependencies): every extra a README command names exists."""
    readme = (ROOT / "README.md").read_text()
    named = {e.strip() for group in re.findall(r'-e\s+"?\.\[([^\]]+)\]', readme) for e in group.split(",")}
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    assert named <= extras, f"README installs extras pyproject.toml does not have: {sorted(named - extras)}"
