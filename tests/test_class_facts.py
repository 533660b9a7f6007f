"""The class facts validation reads instead of importing diffusers: the generated file agrees with
the live classes, the live classes answer where the file cannot, and `validate` stays import-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.validate_cold import imported_by, validate_command
from pipequant.resolver.files.inspect_model import _inspect_cached, inspect_model
from pipequant.resolver.known import catalogue, class_facts
from pipequant.resolver.known.devices import NO_GPU_UNLESS

SAMPLE_PIPELINES = (
    "FluxPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionPipeline",
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
)


def _clear():
    for f in (
        class_facts._table,
        class_facts._pipeline,
        class_facts._call,
        class_facts._class,
        class_facts.quantization_methods,
        class_facts.config_parameters,
        _inspect_cached,
        catalogue._backends,
    ):
        f.cache_clear()


@pytest.fixture
def live_only(monkeypatch):
    """As on a machine whose diffusers/transformers versions differ from the generated file's."""
    _clear()
    monkeypatch.setattr(class_facts, "installed_versions", lambda: {"diffusers": "0.0.0", "transformers": "0.0.0"})
    yield
    monkeypatch.undo()
    _clear()


def _json(value):
    return json.loads(json.dumps(value))


def test_the_file_is_for_the_versions_the_pack_is_tested_with():
    table = json.loads(class_facts.FACTS_FILE.read_text())
    assert table["versions"] == class_facts.installed_versions(), (
        "regenerate resolver/data/class_facts.json: python -m pipequant.resolver.known.class_facts"
    )


def test_the_file_agrees_with_the_live_classes():
    table = json.loads(class_facts.FACTS_FILE.read_text())
    for name in SAMPLE_PIPELINES:
        assert table["pipelines"][name] == _json(class_facts.live_pipeline(name)), name
        for slots in table["pipelines"][name].values():
            for qualified, _ in slots:
                if qualified == class_facts.ANY_SCHEDULER:
                    continue
                library, cls = qualified.split(".", 1)
                if library not in class_facts.LIBRARIES:  # e.g. `requires_safety_checker: bool`
                    continue
                # None: not a top-level class of the library (a safety checker), so not loadable by name
                assert table["classes"].get(qualified) == _json(class_facts.live_class(library, cls)), qualified
    for library in class_facts.LIBRARIES:
        assert table["quantization"][library] == class_facts.live_quantization_methods(library)
        assert table["config_parameters"][library] == class_facts.live_config_parameters(library)
    # model_index.json names parts by their public names, aliases included (T5TokenizerFast).
    for alias in ("transformers.T5TokenizerFast", "transformers.CLIPTokenizer", "transformers.CLIPImageProcessor"):
        library, cls = alias.split(".", 1)
        assert table["classes"][alias] == _json(class_facts.live_class(library, cls)), alias


def test_every_class_of_the_test_pipelines_is_in_the_file(tiny_flux, tiny_sd3, flux_dev, sdxl):
    table = json.loads(class_facts.FACTS_FILE.read_text())
    for folder in (tiny_flux, tiny_sd3, flux_dev, sdxl):
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] in table["pipelines"]
        for name, entry in index.items():
            if not name.startswith("_") and isinstance(entry, list) and entry[0]:
                assert f"{entry[0]}.{entry[1]}" in table["classes"], (folder.name, name, entry)


def test_inspection_from_the_live_classes_agrees_with_the_file(tiny_flux, flux_dev, monkeypatch):
    _clear()
    with monkeypatch.context() as m:  # as where the installed versions differ from the file's
        m.setattr(class_facts, "installed_versions", lambda: {"diffusers": "0.0.0", "transformers": "0.0.0"})
        live = [inspect_model(f) for f in (tiny_flux, flux_dev)]
        assert class_facts._table() == {}
    _clear()
    from_file = [inspect_model(f) for f in (tiny_flux, flux_dev)]
    assert class_facts._table() != {}
    for a, b in zip(live, from_file):
        assert a.describe() == b.describe()
        assert {n: (c.is_module, c.config) for n, c in a.components.items()} == {
            n: (c.is_module, c.config) for n, c in b.components.items()
        }


def test_unknown_names_are_refused_with_or_without_the_file(live_only):
    for _ in range(2):
        assert class_facts.pipeline_components("NotAPipeline") is None
        assert class_facts.pipeline_components("AutoencoderKL") is None  # a model, not a pipeline
        assert class_facts.pipeline_components("os.system") is None
        assert class_facts.class_info("diffusers", "NoSuchModel") is None
        assert class_facts.class_info("builtins", "object") is None
        assert class_facts.class_info("transformers", "T5EncoderModel")["role"] == "model"
        assert class_facts.config_parameters("diffusers", "no-such-method") is None
        _clear()  # second round: from the file


def test_validate_imports_neither_torch_nor_diffusers(tiny_flux, flux_dev, tmp_path):
    """What makes its cold start a fraction of a second (bench.validate_cold measures it)."""
    gpu_files = any(Path(p).exists() for p in NO_GPU_UNLESS)
    for folder in (tiny_flux, flux_dev):
        env = {"PATH": "/usr/bin:/bin", "PIPEQUANT_HF_CACHE": "off", "PYTHONPATH": ":".join(sys.path)}
        done = subprocess.run(
            validate_command(folder.parent, folder.name),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK (validated against the models" in done.stdout
        imported = imported_by(done.stdout)
        assert imported == (["torch"] if gpu_files else []), imported


def test_the_quantization_facts_do_not_depend_on_import_order():
    """SDNQ adds itself to transformers' quantizer mapping when imported; the facts (and so the
    comparison above) must read the same before and after."""
    pytest.importorskip("sdnq")
    import sdnq  # noqa: F401  (the import is the point: it registers sdnq with transformers)

    table = json.loads(class_facts.FACTS_FILE.read_text())
    for library in class_facts.LIBRARIES:
        assert table["quantization"][library] == class_facts.live_quantization_methods(library)
        assert table["config_parameters"][library] == class_facts.live_config_parameters(library)
