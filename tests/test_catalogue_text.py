"""Copies of catalogue facts are generated, and checked here: the README's and the help pages'
backend tables, the Backend and Save tooltips, and the two lists of required packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from pipequant.nodes.backend import PipeQuantBackend
from pipequant.nodes.save import PipeQuantSavePipeline
from pipequant.resolver.known import catalogue, catalogue_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(catalogue_text.SECTIONS))
def test_generated_sections_match_the_catalogue(path):
    text = (ROOT / path).read_text()
    assert catalogue_text.render(path, text) == text, (
        f"{path} drifted from the backend catalogue: run python -m pipequant.resolver.known.catalogue_text"
    )


def test_a_changed_fact_shows_as_drift():
    """The check can fail: flip one savable fact and the Backend page no longer matches."""
    path = "web/docs/PipeQuantBackend.md"
    text = (ROOT / path).read_text()
    torchao = catalogue.get_backend("torchao")
    saved = torchao.savable
    object.__setattr__(torchao, "savable", ())  # a frozen dataclass: undone below
    try:
        assert catalogue_text.render(path, text) != text
    finally:
        object.__setattr__(torchao, "savable", saved)


def test_the_backend_page_says_what_the_catalogue_says_about_saving():
    """The hand-written table once said torchao cannot be saved; the catalogue says it can."""
    row = next(
        line
        for line in (ROOT / "web/docs/PipeQuantBackend.md").read_text().splitlines()
        if line.startswith("| `torchao` |")
    )
    assert row.rstrip(" |").endswith("yes, except int4_weight_only")


def test_tooltips_name_every_backend_and_savable_one():
    tooltip = PipeQuantBackend.INPUT_TYPES()["required"]["backend"][1]["tooltip"]
    for name in catalogue.backend_names():
        assert f"{name}:" in tooltip
    for name in catalogue.backend_names():
        assert (name in PipeQuantSavePipeline.DESCRIPTION) == bool(catalogue.get_backend(name).savable)


def _names(lines) -> set[str]:
    return {
        re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
        for line in lines
        if line.strip() and not line.strip().startswith("#")
    }


def test_requirements_and_pyproject_list_the_same_packages():
    """requirements.txt (what ComfyUI users install) and pyproject's dependencies: one set."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _names((ROOT / "requirements.txt").read_text().splitlines()) == _names(project["dependencies"])
    assert "torch" not in _names(project["dependencies"])  # users bring their own build
