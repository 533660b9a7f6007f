"""The disk cache seen from the Load node, the headless runner and `python -m pipequant cache`.

Node and runner runs execute inside torch.inference_mode(), as ComfyUI does."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

from pipequant.nodes import host
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.resolver import BackendSpec
from pipequant.resolver.keep.deferred_write import wait_for_writes
from pipequant.runner.cli import main
from pipequant.runner.execute import execute

SPEC = BackendSpec.make("torchao", "int8_weight_only", components=["transformer"])


@pytest.fixture
def cache_env(monkeypatch, models_root, tiny_flux, tmp_path):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.setenv("PIPEQUANT_DISK_CACHE", str(tmp_path / "disk-cache"))
    return tmp_path / "disk-cache"


def _node_load(**kwargs):
    with torch.inference_mode():
        result, table = PipeQuantLoadPipeline().load("tiny-flux", "bfloat16", "cpu", "none", SPEC, **kwargs)
    return {r["component"]: r for r in result.rows}, table


def test_disk_cache_input_is_last_optional_boolean_default_on():
    optional = PipeQuantLoadPipeline.INPUT_TYPES()["optional"]
    names = list(optional)
    assert names.index("disk_cache") == names.index("variant") + 1 == names.index("allow_pickle") + 2  # agreed order
    kind, options = optional["disk_cache"]
    assert kind == "BOOLEAN" and options["default"] is True and options["tooltip"]


def test_node_writes_then_reads_and_the_toggle_turns_it_off(cache_env):
    from pipequant.resolver.keep.cache import COMPONENT_CACHE

    COMPONENT_CACHE.clear()
    rows, _ = _node_load()
    # Written after the node returned the pipeline (keep.deferred_write); the row follows the write.
    assert rows["transformer"]["disk_cache"] in ("writing", "written")
    assert wait_for_writes(60) and rows["transformer"]["disk_cache"] == "written"
    COMPONENT_CACHE.clear()
    rows, table = _node_load()
    assert rows["transformer"]["disk_cache"] == "read" and "(disk cache)" in table
    COMPONENT_CACHE.clear()
    rows, table = _node_load(disk_cache=False)
    assert rows["transformer"]["disk_cache"] is None and "(disk cache)" not in table
    COMPONENT_CACHE.clear()
    from pipequant.resolver.keep.disk_cache import STORE

    assert [p.name for p in cache_env.iterdir()] == [STORE]
    assert len([p for p in (cache_env / STORE).iterdir() if p.is_dir()]) == 1


def test_off_in_the_environment_means_no_cache(monkeypatch, models_root, tiny_flux, tmp_path):
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.setenv("PIPEQUANT_DISK_CACHE", "off")
    from pipequant.resolver.keep.cache import COMPONENT_CACHE

    COMPONENT_CACHE.clear()
    rows, _ = _node_load()
    COMPONENT_CACHE.clear()
    assert rows["transformer"]["disk_cache"] is None


def _prompt(model="tiny-flux") -> dict:
    return {
        "1": {
            "class_type": "PipeQuantBackend",
            "inputs": {
                "backend": "torchao",
                "quant_type": "int8_weight_only",
                "compute_dtype": "auto",
                "components": "transformer",
                "options": "{}",
            },
        },
        "2": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {
                "model": model,
                "dtype": "bfloat16",
                "device": "cpu",
                "offload": "none",
                "quantization": ["1", 0],
            },
        },
        "3": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["2", 0]}},
    }


def test_runner_caches_across_runs_and_cli_lists_and_clears(cache_env, capsys):
    from pipequant.resolver.keep.cache import COMPONENT_CACHE

    for expected in ("written", "read"):
        COMPONENT_CACHE.clear()
        ui = execute(_prompt())
        text = "\n".join(t for out in ui.values() for t in out.get("text", []))
        assert ("(disk cache)" in text) == (expected == "read"), text
    COMPONENT_CACHE.clear()

    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 entries" in out and "torchao:int8_weight_only" in out and "tiny-flux / transformer" in out
    assert main(["cache", "clear", "--older-than", "1"]) == 0
    assert "removed 0 entries" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "list", "--folder", str(cache_env)]) == 0
    assert "0 entries" in capsys.readouterr().out


def test_cli_refuses_a_bad_age(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cache", "clear", "--older-than", "soon"])
    assert exc.value.code == 2
    assert "not a number of days" in capsys.readouterr().err


def test_run_help_names_the_environment(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "PIPEQUANT_DISK_CACHE" in out and "PIPEQUANT_DISK_CACHE_GB" in out


def test_comfyui_gets_a_pipequant_cache_folder(monkeypatch, tmp_path):
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "models")
    fake.folder_names_and_paths = {"diffusers": ([str(tmp_path / "models" / "diffusers")], set())}
    fake.get_folder_paths = lambda kind: list(fake.folder_names_and_paths[kind][0])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.delenv("PIPEQUANT_DISK_CACHE")
    try:
        shim = importlib.reload(host)
        assert shim.disk_cache_folder() == tmp_path / "models" / "pipequant_cache"
        assert shim.model_roots() == [tmp_path / "models" / "diffusers"]  # not a model root
        # extra_model_paths.yaml may have named it already: that wins over the default
        fake.folder_names_and_paths["pipequant_cache"] = ([str(tmp_path / "elsewhere")], set())
        shim._register_cache_folder()
        assert shim.disk_cache_folder() == tmp_path / "elsewhere"
        monkeypatch.setenv("PIPEQUANT_DISK_CACHE", str(tmp_path / "env"))
        assert shim.disk_cache_folder() == tmp_path / "env"
    finally:
        monkeypatch.undo()
        importlib.reload(host)
    assert Path(host.disk_cache_folder() or "off") == Path("off")
